"""The cost of one ACK does not grow with the segments in flight (issue 11: O(1) or O(log n)
per ACK at 10,000 segments in flight).

Work is counted, not timed: ``sys.settrace`` counts the Python lines the connection executes
while it processes a run of ACKs (and the output each one releases), with 1,000 and with
10,000 segments in flight. A walk over what is in flight would cost ten times more lines
at 10,000; bisections cost a few lines more. The runs cover the common cumulative ACK and
the ACKs of a loss recovery, whose SACK blocks grow by one segment per ACK above a hole.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from tests.core._factories import CONFIG, T_EST, drain, established, peer
from utcp._connection import Connection
from utcp._recovery import Scoreboard, SentSegment
from utcp._wire import ACK

NOW = T_EST + 0.001  # before any timer: the ACKs alone drive the work
ACKS = 40


def in_flight(segments: int) -> Connection:
    """ESTABLISHED, ``segments`` full-sized segments sent at T_EST and unacknowledged."""
    config = CONFIG.replace(
        send_buffer_size=(segments + ACKS + 10) * 1500,
        initial_window=segments,
        congestion_control="newreno",
    )
    conn = established(config, wscale=14)  # the peer's window: 1 GiB
    mss = conn.effective_mss
    conn.send(b"x" * (segments * mss))
    assert len(conn.segments_to_send(T_EST)) == segments
    drain(conn)
    return conn


def count_lines(work: Callable[[], None]) -> int:
    lines = 0

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal lines
        if event == "line":
            lines += 1
        return tracer

    sys.settrace(tracer)
    try:
        work()
    finally:
        sys.settrace(None)
    return lines


def cumulative_acks(segments: int) -> int:
    conn = in_flight(segments)
    mss = conn.effective_mss

    def work() -> None:
        for i in range(1, ACKS + 1):
            conn.receive_segment(peer(ACK, 1, 1 + i * mss), NOW)
            conn.segments_to_send(NOW)

    lines = count_lines(work)
    assert conn.snd_una == peer(ACK, 1, 1 + ACKS * mss).ack
    return lines


def sack_acks(segments: int) -> int:
    """The first segment is lost; each ACK SACKs one more segment above it."""
    conn = in_flight(segments)
    mss = conn.effective_mss
    una = peer(ACK, 1, 1).ack
    # Half the window is SACKed already: the block the ACKs extend is long.
    half = segments // 2
    conn.receive_segment(peer(ACK, 1, 1, sack_blocks=((una + mss, una + half * mss),)), NOW)
    conn.segments_to_send(NOW)

    def work() -> None:
        for i in range(ACKS):
            block = (una + mss, una + (half + 1 + i) * mss)
            conn.receive_segment(peer(ACK, 1, 1, sack_blocks=(block,)), NOW)
            conn.segments_to_send(NOW)

    lines = count_lines(work)
    assert conn.scoreboard.sacked_bytes == (half + ACKS - 1) * mss
    return lines


def test_cumulative_ack_work_does_not_grow_with_segments_in_flight() -> None:
    small, large = cumulative_acks(1_000), cumulative_acks(10_000)
    assert large <= small * 1.2, (small, large)


def test_sack_ack_work_does_not_grow_with_segments_in_flight() -> None:
    small, large = sack_acks(1_000), sack_acks(10_000)
    assert large <= small * 1.2, (small, large)


def test_sack_runs_mark_exactly_the_segments_a_full_walk_marks() -> None:
    # Scoreboard.apply_sack skips the runs SACKed before; the result must be what walking
    # every segment of every block marks: segments wholly inside a block (RFC 6675 4),
    # through cumulative ACKs that trim runs and a timeout that clears them (RFC 2018 8).
    for seed in range(30):
        rng = random.Random(seed)
        sb = Scoreboard()
        pos = 0
        segs = []
        for _ in range(60):
            size = rng.choice((100, 100, 100, 37))
            seg = SentSegment(pos, pos + size, 0.0, False)
            sb.add(seg)
            segs.append(seg)
            pos += size
        una = 0
        expected: set[int] = set()
        for _ in range(40):
            roll = rng.random()
            if roll < 0.15:
                una = min(pos, una + rng.randrange(0, 400))
                sb.acknowledge(una)
            elif roll < 0.2:
                sb.mark_all_lost()
                expected.clear()
            else:
                lo = rng.randrange(una, pos)
                hi = rng.randrange(lo + 1, pos + 1)
                sb.apply_sack(lo, hi)
                expected |= {id(s) for s in segs if lo <= s.start and s.end <= hi}
            live = [s for s in segs if s.end > una]
            assert {id(s) for s in live if s.sacked} == {id(s) for s in live} & expected, seed
            assert sb.sacked_bytes == sum(s.end - max(s.start, una) for s in live if s.sacked)
