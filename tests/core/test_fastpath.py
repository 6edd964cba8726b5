"""Header prediction (utcp/_fastpath.py): the short path changes exactly what the full
RFC 9293 3.10.7.4 path changes, and is not taken for anything but the two predicted kinds.

- Transfers over the seeded simulated network, with the short path on and off, put the same
  datagrams on the wire at the same virtual times and deliver the same bytes.
- Segment tables: for each unusual segment the short path declines (and changes nothing);
  for the predicted ones it is taken and the TCB, output, timers and events equal the
  full path's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.core._factories import (
    CONFIG,
    PEER_WINDOW,
    T_EST,
    drain,
    established,
    local_ts,
    peer,
    peer_ts,
    tcb,
)
from utcp import _fastpath
from utcp._config import Config
from utcp._connection import Connection
from utcp._wire import ACK, FIN, PSH, RST, SYN, URG, Segment
from utcp.testing import HostPair, LinkConfig, random_payload


@pytest.fixture
def fast_path_off() -> Iterator[None]:
    _fastpath.ENABLED = False
    try:
        yield
    finally:
        _fastpath.ENABLED = True


def run_transfer(seed: int, link: LinkConfig, config: Config, enabled: bool) -> tuple[Any, ...]:
    _fastpath.ENABLED = enabled
    try:
        pair = HostPair(seed=seed, link=link, config=config, trace=True)
        up = random_payload(seed, 150_000)
        down = random_payload(seed + 1, 40_000)
        result = pair.transfer(up, down)
    finally:
        _fastpath.ENABLED = True
    assert result.intact
    wire = [(r.time, r.src, r.dst, r.data) for r in pair.net.trace_records if r.fate == "sent"]
    return wire, result.client.digest_received(), result.server.digest_received()


LINKS = {
    "clean": LinkConfig(delay=0.01),
    "lossy": LinkConfig(delay=0.02, loss=0.03),
    "reordering": LinkConfig(delay=0.01, jitter=0.002, reorder=0.05, duplicate=0.01),
    "bottleneck": LinkConfig(delay=0.02, rate=2e6, queue_bytes=30_000),
}


@pytest.mark.parametrize("name", sorted(LINKS))
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("sack", [True, False])
def test_same_segments_on_the_wire_with_and_without_the_fast_path(
    name: str, seed: int, sack: bool
) -> None:
    config = Config(sack=sack)
    taken = 0
    original = _fastpath.receive_fast

    def counting(conn: Connection, seg: Segment, now: float) -> bool:
        nonlocal taken
        hit = original(conn, seg, now)
        taken += hit
        return hit

    _fastpath.receive_fast = counting
    try:
        fast = run_transfer(seed, LINKS[name], config, True)
    finally:
        _fastpath.receive_fast = original
    slow = run_transfer(seed, LINKS[name], config, False)
    assert taken > 50, f"seed {seed}: the short path was hardly taken"
    assert fast[1:] == slow[1:]
    assert len(fast[0]) == len(slow[0])
    for i, (a, b) in enumerate(zip(fast[0], slow[0], strict=True)):
        assert a == b, f"seed {seed} link {name}: datagram {i} differs"


def run_echo(seed: int, enabled: bool) -> list[tuple[Any, ...]]:
    """40 request-response exchanges (each request acknowledges the last reply) over a
    lossy link, then each end closes with nothing else to send (a FIN alone); returns the
    datagrams on the wire."""
    _fastpath.ENABLED = enabled
    try:
        pair = HostPair(seed=seed, link=LinkConfig(delay=0.01, loss=0.02), trace=True)
        client, server = pair.connect()
        client.nodelay = server.nodelay = True
        for i in range(40):
            request = random_payload(seed * 1000 + i, 64 + i)
            size = len(request)
            client.send(request)
            pair.net.run(lambda n=size: server.readable >= n, timeout=60.0)
            assert server.receive(1 << 20) == request
            server.send(request[::-1])
            pair.net.run(lambda n=size: client.readable >= n, timeout=60.0)
            assert client.receive(1 << 20) == request[::-1]
        client.shutdown(pair.now)
        pair.net.run(lambda: server.at_eof, timeout=60.0)
        server.shutdown(pair.now)
        pair.run_until_closed((client, server))
    finally:
        _fastpath.ENABLED = True
    return [(r.time, r.src, r.dst, r.data) for r in pair.net.trace_records if r.fate == "sent"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_segments_on_the_wire_for_request_response(seed: int) -> None:
    assert run_echo(seed, True) == run_echo(seed, False)


def run_slow_reader(seed: int, enabled: bool) -> list[tuple[Any, ...]]:
    """A transfer into a small receive buffer read slowly: the window closes and reopens,
    the sender's output passes find data held back by it, send window probes (persist),
    then the FIN; returns the datagrams on the wire."""
    _fastpath.ENABLED = enabled
    try:
        config = Config(receive_buffer_size=8192)
        pair = HostPair(
            seed=seed, link=LinkConfig(delay=0.01, loss=0.02), config=config, trace=True
        )
        up, down = random_payload(seed, 60_000), random_payload(seed + 1, 3000)
        assert pair.transfer(up, down, slow_reader="server", read_size=2048).intact
    finally:
        _fastpath.ENABLED = True
    return [(r.time, r.src, r.dst, r.data) for r in pair.net.trace_records if r.fate == "sent"]


@pytest.mark.parametrize("seed", [1, 2])
def test_same_segments_on_the_wire_behind_a_closing_window(seed: int) -> None:
    assert run_slow_reader(seed, True) == run_slow_reader(seed, False)


# ---------------------------------------------------------------------------- tables

NOW = T_EST + 1.0


def sending(config: Config = CONFIG, *, ts: bool = False) -> Connection:
    """ESTABLISHED with 3 full-sized segments of our data in flight."""
    conn = established(config, ts=ts)
    conn.send(b"s" * 3 * conn.effective_mss)
    assert len(conn.segments_to_send(T_EST)) == 3
    drain(conn)
    return conn


def closing_sender() -> Connection:
    """``sending`` after shutdown(): FIN-WAIT-1 with our FIN queued behind the data."""
    conn = sending()
    conn.shutdown(T_EST)
    conn.segments_to_send(T_EST)
    drain(conn)
    return conn


def ts_of(conn: Connection, delta: float = 0.0) -> dict[str, Any]:
    return {"timestamps": (peer_ts(NOW + delta), local_ts(conn, T_EST))} if conn.ts_ok else {}


def in_order_data(conn: Connection, **changes: Any) -> Segment:
    seg = peer(ACK | PSH, 1, 1, b"d" * 100, **ts_of(conn))
    return dataclasses.replace(seg, **changes)


def pure_ack(conn: Connection, **changes: Any) -> Segment:
    seg = peer(ACK, 1, 1 + conn.effective_mss, **ts_of(conn))
    return dataclasses.replace(seg, **changes)


def acking(conn: Connection, segments: int) -> int:
    """The acknowledgment number of our first ``segments`` full-sized segments."""
    return peer(ACK, 1, 1 + segments * conn.effective_mss).ack


def sacked(conn: Connection) -> tuple[int, int]:
    """A SACK block for our second segment."""
    return acking(conn, 1), acking(conn, 2)


Case = Callable[[Connection], Segment]

DECLINED: dict[str, tuple[Callable[[], Connection], Case]] = {
    "out-of-order data": (sending, lambda c: in_order_data(c, seq=peer(ACK, 101).seq)),
    "data below RCV.NXT": (sending, lambda c: in_order_data(c, seq=peer(ACK, 0).seq)),
    "data past the window": (
        sending,
        lambda c: in_order_data(c, payload=b"x" * (c.rcv_wnd + 1)),
    ),
    "data with an ACK of unsent data": (sending, lambda c: in_order_data(c, ack=acking(c, 4))),
    "data with a new ACK in FIN-WAIT-1": (
        closing_sender,
        lambda c: in_order_data(c, ack=acking(c, 1)),
    ),
    "SACK blocks": (sending, lambda c: pure_ack(c, sack_blocks=(sacked(c),))),
    "duplicate ACK with a window change": (
        sending,
        lambda c: pure_ack(c, ack=acking(c, 0), window=PEER_WINDOW - 1),
    ),
    "duplicate ACK": (sending, lambda c: pure_ack(c, ack=peer(ACK, 1, 1).ack)),
    "ACK of unsent data": (sending, lambda c: pure_ack(c, ack=acking(c, 4))),
    "ACK with no data in flight": (established, lambda c: pure_ack(c)),
    "FIN": (sending, lambda c: in_order_data(c, flags=ACK | FIN)),
    "RST": (sending, lambda c: pure_ack(c, flags=ACK | RST)),
    "SYN": (sending, lambda c: pure_ack(c, flags=ACK | SYN)),
    "URG": (sending, lambda c: in_order_data(c, flags=ACK | URG, urgent=1)),
    "no ACK flag": (sending, lambda c: in_order_data(c, flags=PSH)),
    "PAWS: old timestamp": (
        lambda: sending(ts=True),
        lambda c: pure_ack(c, timestamps=((c.ts_recent - 1) & 0xFFFFFFFF, 0)),
    ),
    "timestamps negotiated, none sent": (
        lambda: sending(ts=True),
        lambda c: pure_ack(c, timestamps=None),
    ),
}


def snapshot(conn: Connection) -> dict[str, object]:
    plain = (int, float, bool, str, bytes, tuple, type(None))
    values = {k: getattr(conn, k) for k in Connection.__slots__ if hasattr(conn, k)}
    fields = {k: v for k, v in values.items() if isinstance(v, plain)}
    return {**fields, **tcb(conn), "ooo": conn.rcvbuf.ooo_bytes}


@pytest.mark.parametrize("case", sorted(DECLINED))
def test_fast_path_declines(case: str) -> None:
    make, segment = DECLINED[case]
    conn = make()
    seg = segment(conn)
    before = snapshot(conn)
    assert _fastpath.receive_fast(conn, seg, NOW) is False
    assert snapshot(conn) == before


def test_fast_path_declines_outside_established() -> None:
    conn = sending()
    conn.shutdown(NOW)
    seg = pure_ack(conn)
    assert _fastpath.receive_fast(conn, seg, NOW) is False


def test_fast_path_declines_data_while_a_hole_is_open() -> None:
    conn = sending()
    conn.receive_segment(peer(ACK, 201, 1, b"h" * 100), NOW)  # out of order: a hole at 1
    conn.segments_to_send(NOW)
    before = snapshot(conn)
    assert _fastpath.receive_fast(conn, in_order_data(conn), NOW) is False
    assert snapshot(conn) == before


TAKEN: dict[str, tuple[bool, Case]] = {
    "in-order data": (False, lambda c: in_order_data(c)),
    "in-order data, timestamps": (True, lambda c: in_order_data(c)),
    "pure ACK of new data": (False, lambda c: pure_ack(c)),
    "pure ACK of new data, timestamps": (True, lambda c: pure_ack(c)),
    "pure ACK of everything": (False, lambda c: pure_ack(c, ack=acking(c, 3))),
    "data with a new ACK": (False, lambda c: in_order_data(c, ack=acking(c, 1))),
    "data with a smaller window": (False, lambda c: in_order_data(c, window=PEER_WINDOW - 1)),
    "data with a new ACK, smaller window": (
        False,
        lambda c: in_order_data(c, ack=acking(c, 2), window=PEER_WINDOW - 7),
    ),
    "pure ACK with a smaller window": (False, lambda c: pure_ack(c, window=PEER_WINDOW - 100)),
    "data with a new ACK, timestamps": (True, lambda c: in_order_data(c, ack=acking(c, 3))),
}


@pytest.mark.parametrize("case", sorted(TAKEN))
def test_fast_path_taken_with_the_full_paths_outcome(case: str) -> None:
    ts, segment = TAKEN[case]
    fast, slow = sending(ts=ts), sending(ts=ts)
    seg = segment(fast)
    assert _fastpath.receive_fast(fast, seg, NOW) is True
    fast.stats.segments_received += 1  # what receive_segment counts before the short path
    _fastpath.ENABLED = False
    try:
        slow.receive_segment(seg, NOW)
    finally:
        _fastpath.ENABLED = True
    assert snapshot(fast) == snapshot(slow)
    assert drain(fast) == drain(slow)
    later = NOW + 0.3
    assert fast.segments_to_send(NOW) == slow.segments_to_send(NOW)
    assert fast.next_timer() == slow.next_timer()
    fast.handle_timer(later)
    slow.handle_timer(later)
    assert fast.segments_to_send(later) == slow.segments_to_send(later)
    assert fast.receive(1 << 20) == slow.receive(1 << 20)


@pytest.mark.parametrize("acked_between", [False, True])
def test_ts_recent_on_the_short_path_follows_last_ack_sent(acked_between: bool) -> None:
    # RFC 7323 4.3: TS.Recent takes the TSval of a segment with SEG.SEQ =< Last.ACK.sent.
    # Two in-order data segments: the second one arrives before or after our ACK of the
    # first, so its SEQ is beyond Last.ACK.sent (TS.Recent stays) or at it (it moves).
    fast, slow = sending(ts=True), sending(ts=True)
    first = in_order_data(fast)
    second = in_order_data(fast, seq=peer(ACK, 101).seq, timestamps=(peer_ts(NOW + 0.01), 0))
    for conn, enabled in ((fast, True), (slow, False)):
        _fastpath.ENABLED = enabled
        try:
            conn.receive_segment(first, NOW)
            if acked_between:
                conn._ack_now = True
                assert conn.segments_to_send(NOW)
            conn.receive_segment(second, NOW + 0.01)
        finally:
            _fastpath.ENABLED = True
    assert fast.ts_recent == (second.timestamps[0] if acked_between else first.timestamps[0])
    assert snapshot(fast) == snapshot(slow)
    assert fast.segments_to_send(NOW + 0.01) == slow.segments_to_send(NOW + 0.01)
