"""The sender's loss recovery (``utcp._loss_recovery``), segment by segment.

Each test drives the ESTABLISHED factory connection (our MSS 1400 towards the peer, SRTT
0.5 s from the handshake, RTO 1.5 s) with hand-made ACKs from the peer and checks what the
RFCs prescribe for the congestion state, the segments sent and the samples taken.
"""

from __future__ import annotations

from dataclasses import replace

from _factories import CONFIG, T_EST, L, established, peer

from utcp._connection import Connection
from utcp._wire import ACK, Segment

MSS = 1400  # min(our 1452, the peer's 1400), no timestamps
TLP_CONFIG = replace(CONFIG, tail_loss_probe=True)


def start(n: int) -> int:
    """Offset of the first byte of data segment ``n`` (data starts at offset 1)."""
    return 1 + n * MSS


def send(conn: Connection, segments: int, now: float) -> list[Segment]:
    conn.send(b"x" * (segments * MSS))
    return conn.segments_to_send(now)


def ack(conn: Connection, upto: int, now: float, *sack: tuple[int, int]) -> list[Segment]:
    """The peer acknowledges up to offset ``upto`` with SACK blocks (offset pairs)."""
    blocks = tuple((L(a), L(b)) for a, b in sack)
    conn.receive_segment(peer(ACK, 1, upto, sack_blocks=blocks), now)
    return conn.segments_to_send(now)


def data_offsets(out: list[Segment]) -> list[int]:
    return [(s.seq - L(0)) % 2**32 for s in out if s.payload]


class TestTimeout:
    def test_first_ack_after_rto_does_not_start_fast_recovery(self) -> None:
        # RFC 6675 5.1 / RFC 6582 3.2: an RTO sets RecoveryPoint to SND.NXT and no new
        # recovery starts before it is acknowledged: one RTO, one loss response.
        conn = established()
        send(conn, 10, T_EST)
        t = T_EST + conn.rtt.current_rto()
        conn.handle_timer(t)
        assert data_offsets(conn.segments_to_send(t)) == [start(0)]
        ssthresh = conn.cc.ssthresh
        out = ack(conn, start(1), t + 0.5)
        assert conn.cc.ssthresh == ssthresh
        assert conn.stats.fast_retransmits == 0
        # Slow start after the timeout: cwnd grew by the segment acknowledged.
        assert data_offsets(out) == [start(1), start(2)]
