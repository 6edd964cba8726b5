"""Segment-in / segment-out tests of the state machine, grouped by RFC 9293 state.

Every test starts from a per-state factory (tests/core/_factories.py), feeds hand-made peer
segments at exact virtual times, and asserts the exact segments, state, timer deadline and
events that come out. Sequence numbers are written as stream offsets: ``L(n)`` is ours, ``R(n)``
the peer's, both starting just below 2**32, so every test crosses the wrap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from _factories import (
    CONFIG,
    FACTORIES,
    LOCAL_ISS,
    LOCAL_MSS,
    LOCAL_PORT,
    LOCAL_WINDOW,
    LOCAL_WSCALE,
    PEER_CONFIG,
    PEER_MSS,
    PEER_WINDOW,
    PEER_WSCALE,
    REMOTE_ISS,
    REMOTE_PORT,
    RTT,
    T_CW,
    T_EST,
    T_FW2,
    T_SYN,
    T_TW,
    L,
    R,
    close_wait,
    closed,
    closing,
    deliver,
    drain,
    established,
    fin_wait_1,
    fin_wait_2,
    last_ack,
    listen,
    local_ts,
    ours,
    peer,
    peer_syn,
    peer_ts,
    real_exchange,
    remote,
    syn_received,
    syn_sent,
    tcb,
    time_wait,
)

from utcp._config import DEFAULT_PEER_MSS
from utcp._connection import Connection
from utcp._events import (
    Closed,
    ConnectionFailed,
    DataReceived,
    EOFReceived,
    Established,
    SendSpaceAvailable,
    StateChanged,
)
from utcp._host import Host
from utcp._seq import MASK
from utcp._state import State
from utcp._wire import ACK, FIN, PSH, RST, SYN, URG, Segment, decode_untrusted, encode

BUF = CONFIG.receive_buffer_size
# RFC 6298 (2.2)/(2.3): one sample of RTT gives RTO = RTT + 4 * RTT / 2.
RTO = RTT + 4 * (RTT / 2)
MSL2 = 2 * CONFIG.msl


def window_after(received: int) -> int:
    """Our window field after ``received`` in-order bytes while the right edge has not moved
    (receiver SWS avoidance, RFC 9293 3.8.6.2.2), rounded up so it never moves left."""
    return -(-(BUF - received) // (1 << LOCAL_WSCALE))


def rst(seq: int) -> Segment:
    """<SEQ=seq><CTL=RST> from us."""
    return Segment(LOCAL_PORT, REMOTE_PORT, seq, 0, RST, 0)


def failed_with(conn: Connection, kind: type[BaseException]) -> None:
    """The connection is CLOSED with ``kind`` recorded and reported once, then Closed."""
    assert conn.state is State.CLOSED
    assert isinstance(conn.error, kind)
    events = drain(conn)
    failures = [ev for ev in events if isinstance(ev, ConnectionFailed)]
    assert len(failures) == 1 and failures[0].error is conn.error
    assert isinstance(events[-1], Closed)
    assert conn.next_timer() is None


def closed_cleanly(conn: Connection) -> None:
    assert conn.state is State.CLOSED
    assert conn.error is None
    events = drain(conn)
    assert not any(isinstance(ev, ConnectionFailed) for ev in events)
    assert isinstance(events[-1], Closed)
    assert conn.next_timer() is None


def run_pair(
    a: Connection,
    b: Connection,
    start: float,
    until: float,
    *,
    delay: float = 0.25,
    on_send: Callable[[float, Connection, Segment], object] | None = None,
) -> None:
    """Drive two connections over a lossless link with a fixed one-way ``delay`` the way an
    I/O layer does (STYLE.md rule 2): at each instant feed what arrived, fire due timers,
    flush, re-arm; until ``until`` or until nothing is left to do."""
    flight: list[tuple[float, int, Connection, bytes]] = []
    now, order = start, 0
    for _ in range(10_000):
        for conn, other in ((a, b), (b, a)):
            timer = conn.next_timer()
            if timer is not None and timer <= now:
                conn.handle_timer(now)
            for seg in conn.segments_to_send(now):
                if on_send is not None:
                    on_send(now, conn, seg)
                flight.append((now + delay, order, other, encode(seg)))
                order += 1
        pending = [t for t, _, _, _ in flight]
        pending += [t for c in (a, b) if (t := c.next_timer()) is not None]
        if not pending or min(pending) > until:
            return
        now = max(now, min(pending))
        flight.sort(key=lambda item: item[:2])
        while flight and flight[0][0] <= now:
            _, _, dst, data = flight.pop(0)
            dst.receive_segment(decode_untrusted(data), now)
    raise AssertionError("the pair never went quiet")


# ------------------------------------------------------------------------------ factories


class TestFactories:
    @pytest.mark.parametrize("state", list(FACTORIES), ids=str)
    def test_factory_matches_real_segment_exchange(self, state: State) -> None:
        made = FACTORIES[state]()
        real, _ = real_exchange(state)
        assert made.state is state
        assert tcb(made) == tcb(real)

    def test_isns_wrap(self) -> None:
        # The first data byte of each side sits before 2**32, a full segment crosses it.
        conn = established()
        assert conn.snd_nxt == L(1) == LOCAL_ISS + 1
        assert conn.rcv_nxt == R(1) == REMOTE_ISS + 1
        assert R(PEER_MSS) < R(1) and L(LOCAL_MSS) < L(1)


# ------------------------------------------------------------------------------ CLOSED


class TestClosed:
    @pytest.mark.parametrize(
        "flags", [ACK, ACK | PSH, ACK | FIN, SYN | ACK], ids=["ack", "psh", "fin", "synack"]
    )
    def test_segment_with_ack_draws_rst_seq_seg_ack(self, flags: int) -> None:
        # RFC 9293 3.10.7.1: <SEQ=SEG.ACK><CTL=RST>.
        conn = closed()
        conn.receive_segment(peer(flags, 7, 90, b"data"), 1.0)
        assert conn.segments_to_send(1.0) == [rst(L(90))]
        assert conn.state is State.CLOSED
        assert conn.next_timer() is None

    @pytest.mark.parametrize(
        ("flags", "payload", "seg_len"),
        [(SYN, b"", 1), (0, b"x" * 150, 150), (FIN, b"x" * 150, 151), (SYN | FIN, b"ab", 4)],
        ids=["syn", "data", "data-fin", "syn-fin-data"],
    )
    def test_segment_without_ack_draws_rst_ack(
        self, flags: int, payload: bytes, seg_len: int
    ) -> None:
        # RFC 9293 3.10.7.1: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>; SEG.SEQ is 2**32 - 1.
        conn = closed()
        conn.receive_segment(peer(flags, 99, payload=payload), 1.0)
        assert conn.segments_to_send(1.0) == [
            Segment(LOCAL_PORT, REMOTE_PORT, 0, R(99 + seg_len), RST | ACK, 0)
        ]
        assert R(99 + seg_len) < R(99)  # the answer wrapped

    @pytest.mark.parametrize("flags", [RST, RST | ACK])
    def test_rst_ignored(self, flags: int) -> None:
        conn = closed()
        conn.receive_segment(peer(flags, 1, 1), 1.0)
        assert conn.segments_to_send(1.0) == []
        assert conn.state is State.CLOSED
        assert drain(conn) == []

    def test_host_answers_stray_segments_with_rst(self) -> None:
        host = Host(CONFIG, address=("198.18.0.2", LOCAL_PORT), isn_key=b"k" * 16)
        host.listen(8080)  # a listener on another port changes nothing for port 443
        src = ("198.18.0.1", REMOTE_PORT)
        host.receive_datagrams(
            [(encode(peer_syn()), src), (encode(peer(ACK | PSH, 1, 5, b"hello")), src)], 1.0
        )
        out = [(decode_untrusted(data), addr) for data, addr in host.datagrams_to_send(1.0)]
        assert out == [
            (Segment(LOCAL_PORT, REMOTE_PORT, 0, R(1), RST | ACK, 0), src),
            (rst(L(5)), src),
        ]
        assert host.stats.resets_sent == 2
        assert host.connections == {}

    def test_host_drops_and_counts_garbage(self) -> None:
        host = Host(CONFIG, address=("198.18.0.2", LOCAL_PORT), isn_key=b"k" * 16)
        host.listen()
        src = ("198.18.0.1", REMOTE_PORT)
        good = bytearray(encode(peer_syn()))
        corrupted = bytes(good[:24]) + bytes([good[24] ^ 0x40]) + bytes(good[25:])
        bad_offset = bytes(good[:12]) + bytes([0x20]) + bytes(good[13:16]) + b"\0\0" + good[18:]
        batch = [
            (b"", src),
            (b"\x45" * 19, src),  # shorter than a header
            (corrupted, src),  # checksum does not verify
            (bad_offset, src),  # data offset 2 words, checksum 0 ("not computed")
        ]
        host.receive_datagrams(batch, 1.0)
        assert host.stats.malformed_drops == 3
        assert host.stats.checksum_drops == 1
        assert host.datagrams_to_send(1.0) == []
        assert host.connections == {}


# ------------------------------------------------------------------------------ LISTEN


class TestListen:
    def test_syn_gets_syn_ack_with_negotiated_options(self) -> None:
        conn = listen()
        conn.receive_segment(peer_syn(), T_SYN)
        assert conn.state is State.SYN_RECEIVED
        assert drain(conn) == [StateChanged(State.LISTEN, State.SYN_RECEIVED)]
        # The window of a SYN-ACK is never scaled (RFC 7323 2.2); no timestamps: the peer
        # did not offer them (RFC 7323 3.2).
        assert conn.segments_to_send(T_SYN) == [
            ours(
                SYN | ACK,
                0,
                1,
                window=65535,
                mss=LOCAL_MSS,
                wscale=LOCAL_WSCALE,
                sack_permitted=True,
            )
        ]
        assert conn.next_timer() == T_SYN + CONFIG.initial_rto
        assert (conn.peer_mss, conn.snd_wscale, conn.rcv_wscale) == (PEER_MSS, PEER_WSCALE, 3)
        assert conn.sack_ok and not conn.ts_ok
        assert (conn.irs, conn.iss) == (REMOTE_ISS, LOCAL_ISS)

    def test_syn_with_timestamps_gets_them_echoed(self) -> None:
        conn = listen()
        conn.receive_segment(peer_syn(ts=True), T_SYN)
        (synack,) = conn.segments_to_send(T_SYN)
        assert synack.timestamps == (local_ts(conn, T_SYN), peer_ts(T_SYN))
        assert conn.ts_ok

    @pytest.mark.parametrize(
        "flags", [ACK, ACK | PSH, SYN | ACK, ACK | FIN], ids=["ack", "data", "synack", "fin"]
    )
    def test_ack_draws_rst_seq_seg_ack(self, flags: int) -> None:
        # RFC 9293 3.10.7.2 second: <SEQ=SEG.ACK><CTL=RST>, stay in LISTEN.
        conn = listen()
        conn.receive_segment(peer(flags, 5, 123, b"x"), 1.0)
        assert conn.segments_to_send(1.0) == [rst(L(123))]
        assert conn.state is State.LISTEN
        assert conn.next_timer() is None

    def test_rst_from_unspecified_foreign_socket_goes_back_to_its_source(self) -> None:
        # A LISTEN with the foreign socket unspecified (RFC 9293 3.9.1 OPEN): the reset
        # answers the segment, so it goes back to the port the segment came from.
        conn = Connection(CONFIG, local_port=LOCAL_PORT, iss=LOCAL_ISS)
        conn.listen()
        stray = Segment(5555, LOCAL_PORT, 1, 77, ACK, 100)
        conn.receive_segment(stray, 1.0)
        assert conn.segments_to_send(1.0) == [Segment(LOCAL_PORT, 5555, 77, 0, RST, 0)]

    @pytest.mark.parametrize("flags", [RST, RST | ACK, RST | SYN])
    def test_rst_ignored(self, flags: int) -> None:
        conn = listen()
        conn.receive_segment(peer(flags, 5, 9), 1.0)
        assert conn.segments_to_send(1.0) == []
        assert conn.state is State.LISTEN
        assert drain(conn) == []

    @pytest.mark.parametrize("flags", [0, FIN, PSH], ids=["bare", "fin", "psh"])
    def test_other_segments_dropped(self, flags: int) -> None:
        conn = listen()
        conn.receive_segment(peer(flags, 5, payload=b"abc"), 1.0)
        assert conn.segments_to_send(1.0) == []
        assert conn.state is State.LISTEN

    def test_close_deletes_tcb_silently(self) -> None:
        conn = listen()
        conn.close(1.0)
        assert conn.segments_to_send(1.0) == []
        closed_cleanly(conn)


# ------------------------------------------------------------------------------ SYN-SENT


def synack(conn: Connection, *, ts: bool = True, **changes: Any) -> Segment:
    """The peer's SYN-ACK to our SYN sent at T_SYN (options like peer_syn)."""
    options: dict[str, Any] = {
        "mss": PEER_MSS,
        "wscale": PEER_WSCALE,
        "sack_permitted": True,
        "timestamps": (peer_ts(T_SYN + RTT / 2), local_ts(conn, T_SYN)) if ts else None,
    }
    options.update(changes)
    return peer(SYN | ACK, 0, 1, window=65535, **options)


class TestSynSent:
    def test_connect_sends_syn_with_all_options(self) -> None:
        conn = closed()
        conn.connect(T_SYN)
        assert drain(conn) == [StateChanged(State.CLOSED, State.SYN_SENT)]
        assert conn.segments_to_send(T_SYN) == [
            Segment(
                LOCAL_PORT,
                REMOTE_PORT,
                LOCAL_ISS,
                0,
                SYN,
                65535,
                mss=LOCAL_MSS,
                wscale=LOCAL_WSCALE,
                sack_permitted=True,
                timestamps=(local_ts(conn, T_SYN), 0),
            )
        ]
        # RFC 6298 (2.1): the first RTO is 1 s.
        assert conn.next_timer() == T_SYN + 1.0

    def test_syn_ack_establishes_and_is_acked(self) -> None:
        conn = syn_sent()
        seg = synack(conn)
        conn.receive_segment(seg, T_EST)
        assert conn.state is State.ESTABLISHED
        assert drain(conn) == [StateChanged(State.SYN_SENT, State.ESTABLISHED), Established()]
        assert conn.segments_to_send(T_EST) == [
            ours(ACK, 1, 1, timestamps=(local_ts(conn, T_EST), peer_ts(T_SYN + RTT / 2)))
        ]
        assert conn.next_timer() is None
        assert (conn.snd_una, conn.snd_nxt, conn.rcv_nxt) == (L(1), L(1), R(1))
        assert conn.snd_wnd == 65535  # the SYN-ACK's window is never scaled (RFC 7323 2.2)
        assert conn.rtt.current_rto() == RTO  # RFC 6298 (2.2): the handshake's sample

    @pytest.mark.parametrize("ack", [0, 2, -1000, 2**31], ids=["iss", "beyond", "old", "far"])
    def test_unacceptable_ack_draws_rst(self, ack: int) -> None:
        # RFC 9293 3.10.7.3 first: SEG.ACK =< ISS or > SND.NXT: <SEQ=SEG.ACK><CTL=RST>.
        conn = syn_sent()
        conn.receive_segment(peer(SYN | ACK, 0, ack, window=65535), T_EST)
        assert conn.segments_to_send(T_EST) == [rst(L(ack))]
        assert conn.state is State.SYN_SENT
        assert conn.next_timer() == T_SYN + 1.0

    def test_rst_with_unacceptable_ack_dropped(self) -> None:
        conn = syn_sent()
        conn.receive_segment(peer(RST | ACK, 0, 5), T_EST)
        assert conn.segments_to_send(T_EST) == []
        assert conn.state is State.SYN_SENT

    def test_rst_with_acceptable_ack_refuses(self) -> None:
        conn = syn_sent()
        conn.receive_segment(Segment(REMOTE_PORT, LOCAL_PORT, 0, L(1), RST | ACK, 0), T_EST)
        assert conn.segments_to_send(T_EST) == []
        failed_with(conn, ConnectionRefusedError)

    def test_rst_without_ack_ignored(self) -> None:
        conn = syn_sent()
        conn.receive_segment(peer(RST, 0), T_EST)
        assert conn.segments_to_send(T_EST) == []
        assert conn.state is State.SYN_SENT
        assert drain(conn) == []
        assert conn.next_timer() == T_SYN + 1.0

    def test_segment_without_syn_or_ack_dropped(self) -> None:
        conn = syn_sent()
        conn.receive_segment(peer(PSH, 0, payload=b"early"), T_EST)
        assert conn.segments_to_send(T_EST) == []
        assert conn.state is State.SYN_SENT

    def test_simultaneous_open_completes_on_ack(self) -> None:
        # RFC 9293 3.5 figure 8: SYN crosses SYN; each side answers with SYN-ACK.
        conn = syn_sent()
        conn.receive_segment(peer_syn(), 0.25)
        assert conn.state is State.SYN_RECEIVED
        assert drain(conn) == [StateChanged(State.SYN_SENT, State.SYN_RECEIVED)]
        assert conn.segments_to_send(0.25) == [
            ours(
                SYN | ACK,
                0,
                1,
                window=65535,
                mss=LOCAL_MSS,
                wscale=LOCAL_WSCALE,
                sack_permitted=True,
            )
        ]
        conn.receive_segment(peer(ACK, 1, 1), T_EST)
        assert conn.state is State.ESTABLISHED
        assert drain(conn) == [
            StateChanged(State.SYN_RECEIVED, State.ESTABLISHED),
            Established(),
        ]
        assert conn.segments_to_send(T_EST) == []
        assert (conn.snd_una, conn.snd_nxt, conn.rcv_nxt) == (L(1), L(1), R(1))

    def test_simultaneous_open_completes_on_syn_ack(self) -> None:
        # RFC 9293 3.5 figure 8 line 6: the peer's SYN-ACK reaches us in SYN-RECEIVED and
        # takes us to ESTABLISHED. It must not make us repeat our SYN-ACK.
        conn = syn_sent()
        conn.receive_segment(peer_syn(), 0.25)
        conn.segments_to_send(0.25)
        conn.receive_segment(synack(conn, ts=False), T_EST)
        assert conn.state is State.ESTABLISHED
        out = conn.segments_to_send(T_EST)
        assert all(not seg.flags & SYN for seg in out), out
        assert out in ([], [ours(ACK, 1, 1)])

    def test_simultaneous_open_between_two_connections(self) -> None:
        a = closed()
        b = remote()
        a.connect(0.0)
        b.connect(0.0)
        now = 0.0
        synacks = 0
        for _ in range(6):
            now += 0.25
            to_b = a.segments_to_send(now)
            to_a = b.segments_to_send(now)
            synacks += sum(1 for s in to_a + to_b if s.flags == SYN | ACK)
            for seg in to_b:
                b.receive_segment(decode_untrusted(encode(seg)), now)
            for seg in to_a:
                a.receive_segment(decode_untrusted(encode(seg)), now)
        assert (a.state, b.state) == (State.ESTABLISHED, State.ESTABLISHED)
        assert synacks == 2  # one each, no SYN-ACK ping-pong
        assert (a.snd_nxt, a.rcv_nxt) == (b.rcv_nxt, b.snd_nxt)

    def test_syn_retransmitted_at_initial_rto_then_doubled(self) -> None:
        conn = syn_sent()
        first_syn_time = T_SYN
        deadline = first_syn_time + 1.0
        for backoff in range(4):
            assert conn.next_timer() == deadline
            conn.handle_timer(deadline - 0.001)
            assert conn.segments_to_send(deadline - 0.001) == []
            conn.handle_timer(deadline)
            (syn,) = conn.segments_to_send(deadline)
            assert (syn.flags, syn.seq, syn.mss) == (SYN, LOCAL_ISS, LOCAL_MSS)
            assert syn.timestamps == (local_ts(conn, deadline), 0)
            deadline += 2.0 ** (backoff + 1)  # RFC 6298 (5.5): 2, 4, 8, 16 s
        assert conn.next_timer() == 1.0 + 2.0 + 4.0 + 8.0 + 16.0
        assert conn.state is State.SYN_SENT

    def test_connect_timeout(self) -> None:
        conn = syn_sent(CONFIG.replace(connect_timeout=10.0))
        for t in (1.0, 3.0, 7.0):
            assert conn.next_timer() == t
            conn.handle_timer(t)
            assert [s.flags for s in conn.segments_to_send(t)] == [SYN]
        assert conn.next_timer() == 10.0  # before the next SYN at 15 s
        conn.handle_timer(10.0)
        assert conn.segments_to_send(10.0) == []  # the peer holds no state: no RST
        failed_with(conn, TimeoutError)

    def test_close_deletes_tcb_silently(self) -> None:
        conn = syn_sent()
        conn.close(0.5)
        assert conn.segments_to_send(0.5) == []
        closed_cleanly(conn)


# ------------------------------------------------------------------------------ SYN-RECEIVED


class TestSynReceived:
    def test_syn_ack_retransmitted_at_initial_rto_then_doubled(self) -> None:
        conn = syn_received()
        expected = ours(
            SYN | ACK, 0, 1, window=65535, mss=LOCAL_MSS, wscale=LOCAL_WSCALE, sack_permitted=True
        )
        for deadline in (1.0, 3.0, 7.0):
            assert conn.next_timer() == deadline
            conn.handle_timer(deadline)
            assert conn.segments_to_send(deadline) == [expected]

    def test_retransmitted_syn_gets_syn_ack_again(self) -> None:
        conn = syn_received()
        conn.receive_segment(peer_syn(), 0.3)
        assert [(s.flags, s.seq, s.ack) for s in conn.segments_to_send(0.3)] == [
            (SYN | ACK, L(0), R(1))
        ]
        assert conn.state is State.SYN_RECEIVED

    def test_ack_of_syn_ack_establishes(self) -> None:
        conn = syn_received()
        conn.receive_segment(peer(ACK, 1, 1), T_EST)
        assert drain(conn) == [StateChanged(State.SYN_RECEIVED, State.ESTABLISHED), Established()]
        assert conn.snd_wnd == PEER_WINDOW << PEER_WSCALE
        assert conn.segments_to_send(T_EST) == []
        assert conn.next_timer() is None

    @pytest.mark.parametrize("ack", [0, 2, 5000])
    def test_unacceptable_ack_draws_rst(self, ack: int) -> None:
        # RFC 9293 3.10.7.4 fifth, SYN-RECEIVED: <SEQ=SEG.ACK><CTL=RST>.
        conn = syn_received()
        conn.receive_segment(peer(ACK, 1, ack), T_EST)
        assert conn.segments_to_send(T_EST) == [rst(L(ack))]
        assert conn.state is State.SYN_RECEIVED

    def test_rst_of_passive_open_deletes_tcb_quietly(self) -> None:
        # RFC 9293 3.10.7.4 second: a passive open returns to LISTEN (here: the host's
        # listener lives on; this TCB goes away without an error for the application).
        conn = syn_received()
        conn.receive_segment(peer(RST, 1), 0.25)
        assert conn.segments_to_send(0.25) == []
        closed_cleanly(conn)

    def test_data_with_the_handshake_ack_is_delivered(self) -> None:
        conn = syn_received()
        conn.receive_segment(peer(ACK | PSH, 1, 1, b"early bytes!"), T_EST)
        assert conn.state is State.ESTABLISHED
        assert conn.receive() == b"early bytes!"


# ------------------------------------------------------------------------------ options


class TestOptionNegotiation:
    def test_window_scale_used_when_both_offer_it(self) -> None:
        conn = established()
        assert (conn.snd_wscale, conn.rcv_wscale) == (PEER_WSCALE, LOCAL_WSCALE)
        conn.receive_segment(peer(ACK, 1, 1, window=10), 1.0)
        assert conn.snd_wnd == 10 << PEER_WSCALE
        conn.send(b"a" * 100)
        assert conn.segments_to_send(1.0) == [ours(ACK | PSH, 1, 1, b"a" * 100)]
        assert LOCAL_WINDOW == BUF >> LOCAL_WSCALE == 32768

    def test_no_window_scale_when_peer_does_not_offer_it(self) -> None:
        conn = syn_received(wscale=None)
        assert (conn.snd_wscale, conn.rcv_wscale) == (0, 0)
        conn = established(wscale=None)
        conn.receive_segment(peer(ACK, 1, 1, window=1000), 1.0)
        assert conn.snd_wnd == 1000  # unscaled
        conn.send(b"a" * 100)
        # Our window is unscaled too: the 256 KiB buffer shows as 65535.
        assert conn.segments_to_send(1.0) == [ours(ACK | PSH, 1, 1, b"a" * 100, window=65535)]

    def test_syn_ack_carries_no_window_scale_unless_offered(self) -> None:
        # RFC 7323 1.3: a SYN-ACK may carry the option only if the SYN did.
        conn = listen()
        conn.receive_segment(peer_syn(wscale=None), T_SYN)
        (seg,) = conn.segments_to_send(T_SYN)
        assert seg.wscale is None

    def test_no_window_scale_when_we_do_not_offer_it(self) -> None:
        conn = syn_sent(CONFIG.replace(window_scaling=False))
        conn.receive_segment(synack(conn, ts=False), T_EST)
        assert (conn.snd_wscale, conn.rcv_wscale) == (0, 0)
        conn.receive_segment(peer(ACK, 1, 1, window=1000), 1.0)
        assert conn.snd_wnd == 1000
        drain(conn)
        conn.send(b"b" * 8)
        assert conn.segments_to_send(1.0) == [ours(ACK | PSH, 1, 1, b"b" * 8, window=65535)]

    @pytest.mark.parametrize(
        ("peer_mss", "ts", "effective"),
        [
            (PEER_MSS, False, PEER_MSS),
            (PEER_MSS, True, PEER_MSS - 12),
            (9000, False, LOCAL_MSS),
            (9000, True, LOCAL_MSS - 12),
            (None, False, DEFAULT_PEER_MSS),
            (None, True, DEFAULT_PEER_MSS - 12),
        ],
    )
    def test_mss_is_min_of_both(self, peer_mss: int | None, ts: bool, effective: int) -> None:
        conn = established(ts=ts, mss=peer_mss)
        assert conn.effective_mss == effective
        conn.nodelay = True
        conn.send(b"m" * (2 * effective + 7))
        sizes = [len(s.payload) for s in conn.segments_to_send(1.0)]
        assert sizes == [effective, effective, 7]

    @pytest.mark.parametrize("ts", [False, True])
    def test_maxseg_after_the_handshake_lowers_the_segment_size(self, ts: bool) -> None:
        conn = established(ts=ts)
        conn.set_mss(600)  # TCP_MAXSEG: only lowers what we send once the SYNs are done
        effective = 600 - (12 if ts else 0)
        assert conn.effective_mss == conn.cc.mss == effective
        conn.nodelay = True
        conn.send(b"m" * (effective + 7))
        assert [len(s.payload) for s in conn.segments_to_send(1.0)] == [effective, 7]

    def test_sack_only_if_both(self) -> None:
        assert established().sack_ok
        conn = syn_received(sack_permitted=False)
        assert not conn.sack_ok
        conn = listen()
        conn.receive_segment(peer_syn(sack_permitted=False), T_SYN)
        (seg,) = conn.segments_to_send(T_SYN)
        assert not seg.sack_permitted
        conn = listen(CONFIG.replace(sack=False))
        conn.receive_segment(peer_syn(), T_SYN)
        (seg,) = conn.segments_to_send(T_SYN)
        assert not seg.sack_permitted and not conn.sack_ok
        # Without SACK, out-of-order data is acknowledged without blocks.
        conn = established(sack_permitted=False)
        conn.receive_segment(peer(ACK, 801, 1, b"o" * 200), 1.0)
        assert conn.segments_to_send(1.0) == [ours(ACK, 1, 1)]

    def test_timestamps_only_if_both(self) -> None:
        both = established(ts=True)
        assert both.ts_ok
        both.send(b"t" * 8)
        (seg,) = both.segments_to_send(1.0)
        assert seg.timestamps == (local_ts(both, 1.0), peer_ts(T_EST - RTT / 2))
        # The peer offered none: none from us.
        assert not established().ts_ok
        # We do not offer them: the SYN-ACK carries none even though the peer's SYN did.
        conn = listen(CONFIG.replace(timestamps=False))
        conn.receive_segment(peer_syn(ts=True), T_SYN)
        (seg,) = conn.segments_to_send(T_SYN)
        assert seg.timestamps is None and not conn.ts_ok
        # Active side: our SYN offered them, the SYN-ACK carries none.
        conn = syn_sent()
        conn.receive_segment(synack(conn, ts=False), T_EST)
        assert not conn.ts_ok
        assert conn.segments_to_send(T_EST) == [ours(ACK, 1, 1)]


# ------------------------------------------------------------------------------ ESTABLISHED


class TestEstablishedReceive:
    def test_in_order_data_delivered_and_ack_delayed(self) -> None:
        conn = established()
        conn.receive_segment(peer(ACK | PSH, 1, 1, b"d" * 96), 1.0)
        assert drain(conn) == [DataReceived()]
        assert conn.segments_to_send(1.0) == []
        assert conn.next_timer() == 1.0 + CONFIG.delayed_ack
        conn.handle_timer(1.0 + CONFIG.delayed_ack - 0.001)
        assert conn.segments_to_send(1.0 + CONFIG.delayed_ack - 0.001) == []
        conn.handle_timer(1.0 + CONFIG.delayed_ack)
        assert conn.segments_to_send(1.0 + CONFIG.delayed_ack) == [
            ours(ACK, 1, 97, window=window_after(96))
        ]
        assert conn.next_timer() is None
        assert conn.receive() == b"d" * 96

    def test_second_full_sized_segment_acked_at_once(self) -> None:
        conn = established()
        conn.receive_segment(peer(ACK, 1, 1, b"1" * PEER_MSS), 1.0)
        assert conn.segments_to_send(1.0) == []
        conn.receive_segment(peer(ACK, 1 + PEER_MSS, 1, b"2" * PEER_MSS), 1.01)
        assert conn.segments_to_send(1.01) == [
            ours(ACK, 1, 1 + 2 * PEER_MSS, window=window_after(2 * PEER_MSS))
        ]
        assert conn.next_timer() is None
        assert conn.receive() == b"1" * PEER_MSS + b"2" * PEER_MSS

    def test_out_of_order_gets_immediate_ack_with_sack_then_hole_fills(self) -> None:
        conn = established()
        stream = bytes(range(256)) * 8  # offsets 1..2048
        ranges = ((1, 801), (801, 1001), (1001, 1201), (1201, 1401))
        chunk = {(s, e): stream[s - 1 : e - 1] for s, e in ranges}
        conn.receive_segment(peer(ACK, 801, 1, chunk[(801, 1001)]), 1.0)
        assert conn.readable == 0
        assert conn.segments_to_send(1.0) == [ours(ACK, 1, 1, sack_blocks=((R(801), R(1001)),))]
        # RFC 2018 4: the first block holds the newest segment.
        conn.receive_segment(peer(ACK, 1201, 1, chunk[(1201, 1401)]), 1.1)
        assert conn.segments_to_send(1.1) == [
            ours(ACK, 1, 1, sack_blocks=((R(1201), R(1401)), (R(801), R(1001))))
        ]
        assert drain(conn) == []
        conn.receive_segment(peer(ACK, 1, 1, chunk[(1, 801)]), 1.2)
        assert drain(conn) == [DataReceived()]
        assert conn.segments_to_send(1.2) == [
            ours(ACK, 1, 1001, window=window_after(1000), sack_blocks=((R(1201), R(1401)),))
        ]
        conn.receive_segment(peer(ACK, 1001, 1, chunk[(1001, 1201)]), 1.3)
        # Data that fills a gap is acknowledged at once (RFC 5681 4.2).
        assert conn.segments_to_send(1.3) == [ours(ACK, 1, 1401, window=window_after(1400))]
        assert conn.receive() == stream[:1400]

    def test_duplicate_and_overlapping_segments_trimmed(self) -> None:
        conn = established()
        stream = bytes(i % 251 for i in range(1000))
        conn.receive_segment(peer(ACK, 1, 1, stream[:400]), 1.0)
        conn.receive_segment(peer(ACK, 1, 1, stream[:400]), 1.01)  # duplicate
        # RFC 9293 3.10.7.4 first: not acceptable: ACK it and drop. SACK was negotiated, so
        # the ACK reports the duplicate in a D-SACK block (RFC 2883 4.1.1).
        dsack = ((R(1), R(401)),)
        assert conn.segments_to_send(1.01) == [
            ours(ACK, 1, 401, window=window_after(400), sack_blocks=dsack)
        ]
        conn.receive_segment(peer(ACK, 201, 1, stream[200:600]), 1.02)  # half old
        conn.receive_segment(peer(ACK, 401, 1, stream[400:500]), 1.03)  # all old now
        conn.receive_segment(peer(ACK, 801, 1, stream[800:1000]), 1.04)  # out of order
        conn.receive_segment(peer(ACK, 551, 1, stream[550:900]), 1.05)  # overlaps both sides
        assert conn.receive() == stream
        assert conn.rcv_nxt == R(1001)
        assert conn.rcvbuf.ooo_bytes == 0

    def test_duplicate_of_out_of_order_data_is_reported_before_its_block(self) -> None:
        conn = established()
        conn.receive_segment(peer(ACK, 801, 1, b"o" * 200), 1.0)
        assert conn.segments_to_send(1.0) == [ours(ACK, 1, 1, sack_blocks=((R(801), R(1001)),))]
        conn.receive_segment(peer(ACK, 801, 1, b"o" * 200), 1.1)
        # RFC 2883 4.1.2: the D-SACK block first, then the SACK block that contains it, which
        # is how the sender tells a duplicate above the cumulative ACK from new data.
        block = (R(801), R(1001))
        assert conn.segments_to_send(1.1) == [ours(ACK, 1, 1, sack_blocks=(block, block))]
        assert conn.stats.dup_segments_received == 1
        assert conn.stats.ooo_segments_received == 1

    def test_duplicates_that_arrive_together_are_reported_as_one_block(self) -> None:
        conn = established()
        conn.receive_segment(peer(ACK, 1, 1, b"a" * 800), 1.0)
        assert conn.segments_to_send(1.0) == []  # one segment: the ACK is delayed
        # Two retransmissions arrive before our next ACK leaves: one contiguous duplicate.
        conn.receive_segment(peer(ACK, 1, 1, b"a" * 400), 1.01)
        conn.receive_segment(peer(ACK, 401, 1, b"a" * 400), 1.01)
        assert conn.segments_to_send(1.01) == [
            ours(ACK, 1, 801, window=window_after(800), sack_blocks=((R(1), R(801)),))
        ]

    def test_duplicate_rejected_by_paws_is_still_reported(self) -> None:
        # A retransmission that a later one overtook carries an older TSval and fails PAWS
        # (RFC 7323 5.3); its bytes were received already, so the ACK reports them in a
        # D-SACK block and the sender can still learn its retransmission was spurious.
        conn = established(ts=True)
        conn.receive_segment(
            peer(ACK, 1, 1, b"d" * 400, timestamps=(peer_ts(1.0), local_ts(conn, 0.9))), 1.0
        )
        conn.segments_to_send(1.0)
        late = peer(ACK, 1, 1, b"d" * 400, timestamps=(peer_ts(0.95), local_ts(conn, 0.9)))
        conn.receive_segment(late, 1.2)
        out = conn.segments_to_send(1.2)
        assert [(s.ack, s.sack_blocks) for s in out] == [(R(401), ((R(1), R(401)),))]
        assert conn.stats.drops == {"PAWS: old timestamp": 1}
        assert conn.receive() == b"d" * 400

    @pytest.mark.parametrize(
        ("gap", "quick_ack_gap", "size", "acks_after"),
        [
            (0.010, 0.001, PEER_MSS, [False, True, True, True, True]),  # sparse: each one
            (0.0001, 0.001, PEER_MSS, [False, True, False, True, False]),  # dense: every 2nd
            (0.010, 0.0, PEER_MSS, [False, True, False, True, False]),  # switched off
            (0.010, 0.001, 200, [False, False, False, False, False]),  # small: delayed
        ],
        ids=["sparse", "dense", "off", "small"],
    )
    def test_sparse_full_sized_segments_are_acked_one_by_one(
        self, gap: float, quick_ack_gap: float, size: int, acks_after: list[bool]
    ) -> None:
        conn = established(dataclasses.replace(CONFIG, quick_ack_gap=quick_ack_gap))
        got = []
        for i, _ in enumerate(acks_after):
            now = 1.0 + i * gap
            conn.receive_segment(peer(ACK, 1 + i * size, 1, b"s" * size), now)
            got.append(bool(conn.segments_to_send(now)))
        assert got == acks_after

    @pytest.mark.parametrize(
        "seq", [1 + BUF, 1 + BUF + 5000, -2000, 2**31], ids=["edge", "beyond", "old", "far"]
    )
    def test_segment_outside_window_acked_and_dropped(self, seq: int) -> None:
        conn = established()
        conn.receive_segment(peer(ACK | PSH, seq, 1, b"x" * 8), 1.0)
        # Old data is a duplicate: reported in a D-SACK block (RFC 2883 4.1.1).
        dsack = ((R(seq), R(seq + 8)),) if seq < 1 else ()
        assert conn.segments_to_send(1.0) == [ours(ACK, 1, 1, sack_blocks=dsack)]
        assert conn.readable == 0 and conn.rcvbuf.ooo_bytes == 0
        assert conn.state is State.ESTABLISHED
        assert drain(conn) == []

    def test_rst_at_rcv_nxt_resets(self) -> None:
        conn = established()
        conn.receive_segment(peer(RST, 1), 1.0)
        assert conn.segments_to_send(1.0) == []
        failed_with(conn, ConnectionResetError)

    @pytest.mark.parametrize("seq", [2, 1000, BUF], ids=["next", "inside", "last"])
    def test_rst_in_window_but_not_exact_draws_challenge_ack(self, seq: int) -> None:
        # RFC 5961 3.2: <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>, state unchanged.
        conn = established()
        conn.receive_segment(peer(RST | ACK, seq, 1), 1.0)
        assert conn.segments_to_send(1.0) == [ours(ACK, 1, 1)]
        assert conn.state is State.ESTABLISHED
        assert conn.stats.challenge_acks_sent == 1

    @pytest.mark.parametrize("seq", [0, -500, 1 + BUF, 2**31], ids=["left", "old", "edge", "far"])
    def test_rst_outside_window_silently_dropped(self, seq: int) -> None:
        conn = established()
        conn.receive_segment(peer(RST, seq), 1.0)
        assert conn.segments_to_send(1.0) == []
        assert conn.state is State.ESTABLISHED

    @pytest.mark.parametrize("seq", [1, 500, 2**31], ids=["at-rcv-nxt", "inside", "far"])
    def test_syn_draws_challenge_ack(self, seq: int) -> None:
        # RFC 5961 4.2 / RFC 9293 3.10.7.4 fourth: any SYN here gets <ACK=RCV.NXT>.
        conn = established()
        conn.receive_segment(peer(SYN, seq, window=65535, mss=1000), 1.0)
        assert conn.segments_to_send(1.0) == [ours(ACK, 1, 1)]
        assert conn.state is State.ESTABLISHED
        assert conn.peer_mss == PEER_MSS

    def test_ack_of_unsent_data_acked_and_dropped(self) -> None:
        conn = established()
        conn.receive_segment(peer(ACK | PSH, 1, 100, b"abcd"), 1.0)
        assert conn.segments_to_send(1.0) == [ours(ACK, 1, 1)]
        assert conn.readable == 0  # RFC 9293 3.10.7.4 fifth: drop the segment
        assert (conn.snd_una, conn.snd_nxt) == (L(1), L(1))

    def test_ack_older_than_max_window_acked_and_dropped(self) -> None:
        # RFC 5961 5.2: SEG.ACK < SND.UNA - MAX.SND.WND: discard, and send an ACK.
        conn = established()
        too_old = 1 - conn.max_snd_wnd - 1000
        conn.receive_segment(peer(ACK | PSH, 1, too_old, b"data"), 1.0)
        assert conn.segments_to_send(1.0) == [ours(ACK, 1, 1)]
        assert conn.readable == 0

    @pytest.mark.parametrize("ack", [1000, -(2**20)], ids=["unsent", "too-old"])
    def test_unacceptable_acks_draw_rate_limited_challenge_acks(self, ack: int) -> None:
        # RFC 5961 5.2: discarded "and an ACK sent back"; 7: throttled like every challenge
        # ACK, so forged ACKs cannot draw an unbounded stream of them.
        conn = established(CONFIG.replace(challenge_ack_limit=2))
        sent = []
        for t in (1.0, 1.1, 1.2):
            conn.receive_segment(peer(ACK, 1, 1 + ack - conn.max_snd_wnd * (ack < 0)), t)
            sent.append(conn.segments_to_send(t))
        assert sent == [[ours(ACK, 1, 1)], [ours(ACK, 1, 1)], []]
        assert conn.stats.challenge_acks_sent == 2

    def test_old_but_acceptable_ack_still_delivers_text(self) -> None:
        # RFC 9293 3.10.7.4 fifth: a duplicate ACK (SEG.ACK < SND.UNA) is ignored, the
        # segment's text is still processed.
        conn = established()
        conn.send(b"s" * 100)
        conn.segments_to_send(1.0)
        conn.receive_segment(peer(ACK, 1, 101), 1.5)
        conn.receive_segment(peer(ACK | PSH, 1, 51, b"text"), 1.6)
        assert conn.receive() == b"text"
        assert conn.snd_una == L(101)

    def test_urgent_data_delivered_in_line(self) -> None:
        # WIRE.md: URG is not supported; the flag is ignored and the data delivered in line.
        conn = established()
        conn.receive_segment(peer(ACK | URG, 1, 1, b"urgent!!", urgent=3), 1.0)
        assert conn.receive() == b"urgent!!"

    def test_challenge_acks_rate_limited(self) -> None:
        # RFC 5961 7: at most challenge_ack_limit challenge ACKs per second.
        conn = established(CONFIG.replace(challenge_ack_limit=2))
        sent = []
        for i, t in enumerate((1.0, 1.1, 1.2, 1.3, 2.0)):
            conn.receive_segment(peer(RST, 100 + i), t)
            sent.append(len(conn.segments_to_send(t)))
        assert sent == [1, 1, 0, 0, 1]
        assert conn.state is State.ESTABLISHED

    def test_syn_outside_window_draws_a_rate_limited_challenge_ack(self) -> None:
        # RFC 5961 4.2: a SYN "irrespective of the sequence number" gets a challenge ACK,
        # and 7 rate-limits it like every other (it is no plain duplicate ACK).
        conn = established(CONFIG.replace(challenge_ack_limit=2))
        sent = []
        for t in (1.0, 1.1, 1.2):
            conn.receive_segment(peer(SYN, 2**31, window=65535), t)
            sent.append(conn.segments_to_send(t))
        assert sent == [[ours(ACK, 1, 1)], [ours(ACK, 1, 1)], []]
        assert conn.stats.challenge_acks_sent == 2

    def test_paws_drops_old_timestamp_with_ack(self) -> None:
        conn = established(ts=True)
        conn.receive_segment(peer(ACK, 1, 1, b"new" * 8, timestamps=(peer_ts(1.0), 0)), 1.0)
        assert conn.ts_recent == peer_ts(1.0)
        old = peer(ACK, 25, 1, b"old" * 8, timestamps=(peer_ts(1.0) - 1, 0))
        conn.receive_segment(old, 1.05)
        assert conn.readable == 24  # RFC 7323 5.3 R1: dropped
        assert conn.segments_to_send(1.05) == [
            ours(
                ACK, 1, 25, window=window_after(24), timestamps=(local_ts(conn, 1.05), peer_ts(1.0))
            )
        ]

    def test_fin_delivers_eof_and_moves_to_close_wait(self) -> None:
        conn = established()
        conn.receive_segment(peer(ACK | FIN | PSH, 1, 1, b"bye!" * 2), T_CW)
        assert drain(conn) == [
            DataReceived(),
            EOFReceived(),
            StateChanged(State.ESTABLISHED, State.CLOSE_WAIT),
        ]
        assert conn.segments_to_send(T_CW) == [ours(ACK, 1, 10, window=window_after(8))]
        assert conn.receive() == b"bye!" * 2 and conn.at_eof

    def test_out_of_order_fin_waits_for_the_hole(self) -> None:
        conn = established()
        conn.receive_segment(peer(ACK | FIN, 9, 1, b"tail"), 1.0)
        assert conn.state is State.ESTABLISHED
        (ack,) = conn.segments_to_send(1.0)
        # Whether a SACK block covers the FIN too is the code's choice (13 or 14 here).
        assert (ack.ack, ack.sack_blocks[0][0]) == (R(1), R(9))
        conn.receive_segment(peer(ACK, 1, 1, b"head" * 2), 1.1)
        assert conn.state is State.CLOSE_WAIT
        assert conn.segments_to_send(1.1) == [ours(ACK, 1, 14, window=window_after(12))]
        assert conn.receive() == b"headheadtail"

    def test_receive_buffer_never_grows_past_advertised_window(self) -> None:
        small = 4096
        conn = established(CONFIG.replace(receive_buffer_size=small))
        assert conn.rcv_wscale == 0
        stream = bytes(i % 253 for i in range(20_000))
        # Out of order, straddling the right edge: trimmed to it.
        conn.receive_segment(peer(ACK, 2001, 1, stream[2000:5000]), 1.0)
        assert conn.rcvbuf.ooo_bytes == small - 2000
        for off in range(1, 12_000, PEER_MSS):
            conn.receive_segment(peer(ACK, off, 1, stream[off - 1 : off - 1 + PEER_MSS]), 1.1)
            assert len(conn.rcvbuf.ready) + conn.rcvbuf.ooo_bytes <= small
        # One oversized segment far past the MSS changes nothing either.
        conn.receive_segment(peer(ACK, small + 1, 1, stream[small:]), 1.2)
        assert len(conn.rcvbuf.ready) == small and conn.rcvbuf.ooo_bytes == 0
        out = conn.segments_to_send(1.2)
        # (Its D-SACK block reports the duplicated bytes, RFC 2883 4.1.1.)
        assert dataclasses.replace(out[-1], sack_blocks=()) == ours(ACK, 1, 1 + small, window=0)
        assert conn.receive(1 << 20) == stream[:small]

    def test_data_into_zero_window_acked_at_once(self) -> None:
        # RFC 9293 3.8.6.1: "If the receiving TCP peer has a zero window and a segment
        # arrives, it must still send an acknowledgment showing its next expected sequence
        # number and current window (zero)"; 3.10.7.4 first: RCV.WND = 0 and SEG.LEN > 0 is
        # not acceptable, so the answer is an ACK now, not a delayed one.
        small = 4096
        conn = established(CONFIG.replace(receive_buffer_size=small))
        for off in (1, 1401, 2801):
            conn.receive_segment(peer(ACK, off, 1, b"f" * PEER_MSS), 1.0)
        # RFC 5681 4.2: two full-sized segments in the batch: one ACK for the whole batch
        # (test_review_receiver.py TestStretchAcks), the window now closed.
        assert conn.segments_to_send(1.0) == [ours(ACK, 1, 1 + small, window=0)]
        assert conn.next_timer() is None
        probe = peer(ACK, 1 + small, 1, b"p")  # a BSD-style probe: one new octet
        conn.receive_segment(probe, 2.0)
        assert conn.segments_to_send(2.0) == [ours(ACK, 1, 1 + small, window=0)]
        assert conn.readable == small


class TestEstablishedSend:
    def test_nagle_holds_small_segment_while_one_is_unacked(self) -> None:
        conn = established()
        conn.send(b"a" * 10)
        assert conn.segments_to_send(1.0) == [ours(ACK | PSH, 1, 1, b"a" * 10)]
        assert conn.next_timer() == 1.0 + RTO
        conn.send(b"b" * 10)
        assert conn.segments_to_send(1.01) == []
        conn.receive_segment(peer(ACK, 1, 11), 1.5)
        assert drain(conn) == [SendSpaceAvailable()]
        assert conn.segments_to_send(1.5) == [ours(ACK | PSH, 11, 1, b"b" * 10)]

    def test_nodelay_sends_small_segments_at_once(self) -> None:
        conn = established()
        conn.nodelay = True
        conn.send(b"a" * 10)
        assert conn.segments_to_send(1.0) == [ours(ACK | PSH, 1, 1, b"a" * 10)]
        conn.send(b"b" * 10)
        assert conn.segments_to_send(1.01) == [ours(ACK | PSH, 11, 1, b"b" * 10)]

    def test_peer_window_respected(self) -> None:
        conn = established()
        conn.nodelay = True
        conn.receive_segment(peer(ACK, 1, 1, window=22), 1.0)  # 22 << 7 = 2816 bytes
        assert conn.snd_wnd == 2816
        data = bytes(i % 241 for i in range(10_000))
        conn.send(data)
        assert conn.segments_to_send(1.0) == [
            ours(ACK, 1, 1, data[:PEER_MSS]),
            ours(ACK, 1 + PEER_MSS, 1, data[PEER_MSS : 2 * PEER_MSS]),
        ]
        # Each ACK slides the window by one segment: exactly one more segment fits.
        now = 1.0
        sent_to = 1 + 2 * PEER_MSS
        for acked in range(1 + PEER_MSS, 1 + 5 * PEER_MSS, PEER_MSS):
            now += 0.5
            conn.receive_segment(peer(ACK, 1, acked, window=22), now)
            out = conn.segments_to_send(now)
            assert out == [ours(ACK, sent_to, 1, data[sent_to - 1 : sent_to - 1 + PEER_MSS])]
            sent_to += PEER_MSS
            assert sent_to <= acked + 2816  # never beyond SND.UNA + SND.WND

    def test_zero_window_probed_by_persist_timer_until_it_reopens(self) -> None:
        conn = established()
        conn.receive_segment(peer(ACK, 1, 1, window=0), 1.0)
        conn.send(b"d" * 100)
        assert conn.segments_to_send(1.0) == []
        # RFC 9293 3.8.6.1: the first probe after one RTO, then backing off.
        assert conn.next_timer() == 1.0 + RTO
        conn.handle_timer(1.0 + RTO)
        # A Linux-style probe <SEQ=SND.UNA-1>: old, so the peer must answer with its window.
        assert conn.segments_to_send(1.0 + RTO) == [ours(ACK, 0, 1)]
        assert conn.next_timer() == 1.0 + RTO + 2 * RTO
        conn.receive_segment(peer(ACK, 1, 1, window=0), 2.75)
        assert conn.segments_to_send(2.75) == []
        assert conn.next_timer() == 1.0 + 3 * RTO
        conn.handle_timer(1.0 + 3 * RTO)
        assert conn.segments_to_send(1.0 + 3 * RTO) == [ours(ACK, 0, 1)]
        assert conn.next_timer() == 1.0 + 3 * RTO + 4 * RTO
        conn.receive_segment(peer(ACK, 1, 1, window=1), 6.0)  # reopens: 128 bytes
        assert conn.segments_to_send(6.0) == [ours(ACK | PSH, 1, 1, b"d" * 100)]
        assert conn.next_timer() == 6.0 + RTO

    def test_old_window_update_ignored(self) -> None:
        # RFC 9293 3.10.7.4 fifth: SND.WND changes only for a segment no older than the one
        # that last set it (SND.WL1 < SEG.SEQ, or SND.WL1 = SEG.SEQ and SND.WL2 =< SEG.ACK).
        conn = established()
        conn.nodelay = True
        conn.send(b"w" * 1000)
        conn.segments_to_send(1.0)
        conn.receive_segment(peer(ACK, 1, 1001, window=100), 1.5)
        conn.receive_segment(peer(ACK, 1, 501, window=0), 1.5)  # reordered, older
        assert conn.snd_wnd == 100 << PEER_WSCALE
        conn.receive_segment(peer(ACK, 5, 1001, window=0), 1.6)  # newer: a zero window
        assert conn.snd_wnd == 0

    def test_rto_restarted_by_partial_ack(self) -> None:
        # RFC 6298 (5.3): an ACK of new data restarts the timer; (5.2) all acked stops it.
        conn = established()
        conn.nodelay = True
        conn.send(b"p" * 2 * PEER_MSS)
        assert len(conn.segments_to_send(1.0)) == 2
        assert conn.next_timer() == 1.0 + RTO
        conn.receive_segment(peer(ACK, 1, 1 + PEER_MSS), 1.5)
        rto = conn.rtt.current_rto()  # a new sample of 0.5 s: RTTVAR shrinks
        assert rto == RTT + 4 * (0.75 * RTT / 2)
        assert conn.next_timer() == 1.5 + rto
        conn.receive_segment(peer(ACK, 1, 1 + 2 * PEER_MSS), 1.75)
        assert conn.next_timer() is None

    def test_retransmission_limit_times_out(self) -> None:
        # RFC 9293 3.8.3 R2: give up after max_retransmissions expiries.
        conn = established(CONFIG.replace(max_retransmissions=2))
        conn.send(b"r" * 100)
        conn.segments_to_send(1.0)
        for deadline in (1.0 + RTO, 1.0 + 3 * RTO):
            assert conn.next_timer() == deadline
            conn.handle_timer(deadline)
            assert len(conn.segments_to_send(deadline)) == 1
        assert conn.next_timer() == 1.0 + 7 * RTO
        conn.handle_timer(1.0 + 7 * RTO)
        assert conn.segments_to_send(1.0 + 7 * RTO) == [rst(L(101))]
        failed_with(conn, TimeoutError)

    def test_retransmission_after_rto_with_backoff(self) -> None:
        conn = established()
        conn.send(b"r" * 100)
        seg = ours(ACK | PSH, 1, 1, b"r" * 100)
        assert conn.segments_to_send(1.0) == [seg]
        deadline = 1.0 + RTO
        for backoff in range(1, 4):
            assert conn.next_timer() == deadline
            conn.handle_timer(deadline - 0.001)
            assert conn.segments_to_send(deadline - 0.001) == []
            conn.handle_timer(deadline)
            assert conn.segments_to_send(deadline) == [seg]
            deadline += RTO * 2**backoff
        assert conn.next_timer() == 1.0 + RTO * (1 + 2 + 4 + 8)
        conn.receive_segment(peer(ACK, 1, 101), 30.0)
        assert conn.next_timer() is None
        assert conn.segments_to_send(30.0) == []

    @pytest.mark.parametrize("via", ["config", "attribute"])
    def test_user_timeout_fails_connection(self, via: str) -> None:
        if via == "config":
            conn = established(CONFIG.replace(user_timeout=4.0))
        else:
            conn = established()
            conn.user_timeout = 4.0
        conn.send(b"u" * 100)
        conn.segments_to_send(1.0)
        assert conn.next_timer() == 1.0 + RTO
        conn.handle_timer(1.0 + RTO)
        assert len(conn.segments_to_send(1.0 + RTO)) == 1
        assert conn.next_timer() == 1.0 + 4.0  # before the next RTO at 5.5
        conn.handle_timer(5.0)
        # The code resets the connection it gives up (RFC 9293 3.10.8 only requires CLOSED).
        assert conn.segments_to_send(5.0) == [rst(L(101))]
        failed_with(conn, TimeoutError)

    def test_keepalive_probes_then_times_out(self) -> None:
        conn = established()
        conn.keepalive = True
        conn.keepalive_idle, conn.keepalive_interval, conn.keepalive_count = 10.0, 2.0, 3
        assert conn.segments_to_send(T_EST) == []
        t = T_EST + 10.0
        for _ in range(3):
            assert conn.next_timer() == t
            conn.handle_timer(t)
            # RFC 9293 3.8.4: <SEQ=SND.NXT-1>, no data, so the peer must answer.
            assert conn.segments_to_send(t) == [ours(ACK, 0, 1)]
            t += 2.0
        assert conn.next_timer() == t
        conn.handle_timer(t)
        assert conn.segments_to_send(t) == [rst(L(1))]
        failed_with(conn, TimeoutError)

    def test_answered_keepalive_keeps_connection(self) -> None:
        conn = established()
        conn.keepalive = True
        conn.keepalive_idle, conn.keepalive_interval, conn.keepalive_count = 10.0, 2.0, 3
        conn.segments_to_send(T_EST)
        conn.handle_timer(T_EST + 10.0)
        assert conn.segments_to_send(T_EST + 10.0) == [ours(ACK, 0, 1)]
        conn.receive_segment(peer(ACK, 1, 1), T_EST + 10.25)
        assert conn.segments_to_send(T_EST + 10.25) == []
        assert conn.next_timer() == T_EST + 10.25 + 10.0
        assert conn.state is State.ESTABLISHED

    def test_keepalive_between_two_connections(self) -> None:
        # A live peer answers every probe: the connection survives any number of idle
        # periods, with one probe per idle period (the first unanswered one would kill it).
        local, rem = real_exchange(State.ESTABLISHED)
        local.keepalive = True
        local.keepalive_idle, local.keepalive_interval, local.keepalive_count = 10.0, 2.0, 1
        sent: list[tuple[float, Segment]] = []

        def watch(now: float, src: Connection, seg: Segment) -> None:
            if src is local:
                sent.append((now, seg))

        run_pair(local, rem, T_EST, 45.0, on_send=watch)
        assert local.state is State.ESTABLISHED, local.error
        # Probes at 10.5, answered at 11.0; 21.0, answered at 21.5; 31.5; 42.0.
        assert sent == [(t, ours(ACK, 0, 1)) for t in (10.5, 21.0, 31.5, 42.0)]
        assert local.next_timer() == 52.5


# ------------------------------------------------------------------------------ closing


class TestFinWait1:
    def test_shutdown_sends_fin_after_queued_data(self) -> None:
        conn = established()
        conn.nodelay = True
        data = bytes(i % 211 for i in range(3000))
        conn.send(data)
        conn.shutdown(1.0)
        assert conn.state is State.FIN_WAIT_1
        assert conn.segments_to_send(1.0) == [
            ours(ACK, 1, 1, data[:1400]),
            ours(ACK, 1401, 1, data[1400:2800]),
            ours(ACK | PSH | FIN, 2801, 1, data[2800:]),
        ]
        assert conn.snd_nxt == L(3002)
        with pytest.raises(RuntimeError):
            conn.send(b"more")

    def test_fin_alone(self) -> None:
        conn = established()
        conn.shutdown(T_EST)
        assert drain(conn) == [StateChanged(State.ESTABLISHED, State.FIN_WAIT_1)]
        assert conn.segments_to_send(T_EST) == [ours(ACK | FIN, 1, 1)]
        assert conn.next_timer() == T_EST + RTO

    def test_fin_retransmitted_on_rto(self) -> None:
        conn = fin_wait_1()
        for deadline in (T_EST + RTO, T_EST + 3 * RTO, T_EST + 7 * RTO):
            assert conn.next_timer() == deadline
            conn.handle_timer(deadline)
            assert conn.segments_to_send(deadline) == [ours(ACK | FIN, 1, 1)]
        assert conn.state is State.FIN_WAIT_1

    def test_ack_of_data_but_not_fin_stays(self) -> None:
        conn = established()
        conn.send(b"k" * 100)
        conn.shutdown(1.0)
        assert conn.segments_to_send(1.0) == [ours(ACK | PSH | FIN, 1, 1, b"k" * 100)]
        conn.receive_segment(peer(ACK, 1, 101), 1.5)
        assert conn.state is State.FIN_WAIT_1
        assert conn.next_timer() == 1.5 + conn.rtt.current_rto()
        conn.receive_segment(peer(ACK, 1, 102), 1.6)
        assert conn.state is State.FIN_WAIT_2

    def test_ack_of_fin_moves_to_fin_wait_2(self) -> None:
        conn = fin_wait_1()
        conn.receive_segment(peer(ACK, 1, 2), T_FW2)
        assert drain(conn) == [StateChanged(State.FIN_WAIT_1, State.FIN_WAIT_2)]
        assert conn.segments_to_send(T_FW2) == []
        assert conn.next_timer() is None  # not orphaned: no FIN-WAIT-2 timer

    def test_peer_can_still_send(self) -> None:
        conn = fin_wait_1()
        conn.receive_segment(peer(ACK | PSH, 1, 1, b"still here"), 0.75)
        assert conn.receive() == b"still here"
        assert conn.state is State.FIN_WAIT_1
        assert conn.next_timer() == 0.75 + CONFIG.delayed_ack  # before the RTO at 2.0
        conn.handle_timer(0.75 + CONFIG.delayed_ack)
        assert conn.segments_to_send(0.875) == [ours(ACK, 2, 11, window=window_after(10))]

    def test_peer_fin_moves_to_closing(self) -> None:
        conn = fin_wait_1()
        conn.receive_segment(peer(ACK | FIN, 1, 1), T_CW)
        assert drain(conn) == [EOFReceived(), StateChanged(State.FIN_WAIT_1, State.CLOSING)]
        assert conn.segments_to_send(T_CW) == [ours(ACK, 2, 2)]

    def test_fin_and_ack_of_ours_together_go_to_time_wait(self) -> None:
        conn = fin_wait_1()
        conn.receive_segment(peer(ACK | FIN, 1, 2), T_FW2)
        assert conn.state is State.TIME_WAIT
        assert conn.segments_to_send(T_FW2) == [ours(ACK, 2, 2)]
        assert conn.next_timer() == T_FW2 + MSL2


class TestFinWait2:
    def test_we_can_still_receive(self) -> None:
        conn = fin_wait_2()
        conn.receive_segment(peer(ACK | PSH, 1, 2, b"y" * 80), 1.5)
        assert drain(conn) == [DataReceived()]
        assert conn.receive() == b"y" * 80
        assert conn.next_timer() == 1.5 + CONFIG.delayed_ack
        conn.handle_timer(1.5 + CONFIG.delayed_ack)
        assert conn.segments_to_send(1.625) == [ours(ACK, 2, 81, window=window_after(80))]

    def test_fin_moves_to_time_wait(self) -> None:
        conn = fin_wait_2()
        conn.receive_segment(peer(ACK | FIN, 1, 2), T_TW)
        assert drain(conn) == [EOFReceived(), StateChanged(State.FIN_WAIT_2, State.TIME_WAIT)]
        assert conn.segments_to_send(T_TW) == [ours(ACK, 2, 2)]
        assert conn.next_timer() == T_TW + MSL2

    def test_orphaned_connection_times_out(self) -> None:
        conn = established()
        conn.close(T_EST)
        assert conn.segments_to_send(T_EST) == [ours(ACK | FIN, 1, 1)]
        conn.receive_segment(peer(ACK, 1, 2), T_FW2)
        assert conn.state is State.FIN_WAIT_2
        assert conn.next_timer() == T_FW2 + CONFIG.fin_wait_2_timeout
        conn.handle_timer(T_FW2 + CONFIG.fin_wait_2_timeout)
        assert conn.segments_to_send(T_FW2 + CONFIG.fin_wait_2_timeout) == []
        closed_cleanly(conn)

    def test_close_in_fin_wait_2_arms_the_timer(self) -> None:
        conn = fin_wait_2()
        conn.close(2.0)
        assert conn.next_timer() == 2.0 + CONFIG.fin_wait_2_timeout


class TestClosing:
    def test_ack_of_fin_moves_to_time_wait(self) -> None:
        conn = closing()
        assert conn.next_timer() == T_EST + RTO  # our FIN is still unacked
        conn.receive_segment(peer(ACK, 2, 2), 1.5)
        assert drain(conn) == [StateChanged(State.CLOSING, State.TIME_WAIT)]
        assert conn.segments_to_send(1.5) == []
        assert conn.next_timer() == 1.5 + MSL2

    def test_fin_retransmitted_on_rto(self) -> None:
        conn = closing()
        conn.handle_timer(T_EST + RTO)
        assert conn.segments_to_send(T_EST + RTO) == [ours(ACK | FIN, 1, 2)]

    def test_simultaneous_close_between_two_connections(self) -> None:
        local, rem = real_exchange(State.ESTABLISHED)
        local.shutdown(1.0)
        rem.shutdown(1.0)
        to_rem = local.segments_to_send(1.0)
        to_local = rem.segments_to_send(1.0)
        for seg in to_rem:
            rem.receive_segment(decode_untrusted(encode(seg)), 1.25)
        for seg in to_local:
            local.receive_segment(decode_untrusted(encode(seg)), 1.25)
        assert (local.state, rem.state) == (State.CLOSING, State.CLOSING)
        deliver(local, rem, 1.25, 1.5)
        deliver(rem, local, 1.25, 1.5)
        assert (local.state, rem.state) == (State.TIME_WAIT, State.TIME_WAIT)
        assert local.next_timer() == 1.5 + MSL2
        assert rem.next_timer() == 1.5 + 2 * PEER_CONFIG.msl


class TestTimeWait:
    def test_lasts_exactly_2msl(self) -> None:
        conn = time_wait()
        assert conn.next_timer() == T_TW + MSL2
        conn.handle_timer(T_TW + MSL2 - 0.001)
        assert conn.state is State.TIME_WAIT
        conn.handle_timer(T_TW + MSL2)
        assert conn.segments_to_send(T_TW + MSL2) == []
        closed_cleanly(conn)

    def test_retransmitted_fin_reacked_and_timer_restarted(self) -> None:
        # RFC 9293 3.10.7.4: acknowledge the retransmitted FIN and restart the 2 MSL timeout.
        conn = time_wait()
        conn.receive_segment(peer(ACK | FIN, 1, 2), 3.0)
        assert conn.segments_to_send(3.0) == [ours(ACK, 2, 2)]
        assert conn.state is State.TIME_WAIT
        assert conn.next_timer() == 3.0 + MSL2

    def test_new_syn_through_host_reopens(self) -> None:
        # RFC 9293 3.10.7.4 / RFC 6191: a new SYN above the old sequence space may take over
        # a connection in TIME-WAIT; an old one only gets an ACK.
        host = Host(
            CONFIG,
            address=("198.18.0.2", LOCAL_PORT),
            isn_key=b"k" * 16,
            iss_function=lambda _id, _now: LOCAL_ISS,
        )
        host.listen()
        src = ("198.18.0.1", REMOTE_PORT)

        def feed(seg: Segment, now: float) -> list[Segment]:
            host.receive_datagrams([(encode(seg), src)], now)
            return [decode_untrusted(data) for data, _ in host.datagrams_to_send(now)]

        feed(peer_syn(), T_SYN)
        feed(peer(ACK, 1, 1), T_EST)
        conn = host.accept(LOCAL_PORT)
        assert conn is not None
        conn.shutdown(T_EST)
        assert feed(peer(ACK, 1, 2), T_FW2) == [ours(ACK | FIN, 1, 1)]
        assert feed(peer(ACK | FIN, 1, 2), T_TW) == [ours(ACK, 2, 2)]
        assert conn.state is State.TIME_WAIT
        old = Segment(REMOTE_PORT, LOCAL_PORT, R(1), 0, SYN, 65535, mss=PEER_MSS)
        assert feed(old, 2.0) == [ours(ACK, 2, 2)]
        new = Segment(REMOTE_PORT, LOCAL_PORT, R(100_000), 0, SYN, 65535, mss=PEER_MSS)
        out = feed(new, 2.5)
        assert conn.state is State.CLOSED
        assert [(s.flags, s.seq, s.ack) for s in out] == [(SYN | ACK, L(0), R(100_001))]

    def test_abort_sends_nothing(self) -> None:
        conn = time_wait()
        conn.abort(2.0)
        assert conn.segments_to_send(2.0) == []
        closed_cleanly(conn)


class TestCloseWait:
    def test_we_can_still_send(self) -> None:
        conn = close_wait()
        conn.send(b"z" * 50)
        assert conn.segments_to_send(1.5) == [ours(ACK | PSH, 1, 2, b"z" * 50)]
        conn.receive_segment(peer(ACK, 2, 51), 2.0)
        assert conn.snd_una == L(51)
        assert conn.state is State.CLOSE_WAIT

    def test_shutdown_sends_fin_after_data(self) -> None:
        conn = close_wait()
        conn.send(b"z" * 50)
        conn.shutdown(1.5)
        assert drain(conn) == [StateChanged(State.CLOSE_WAIT, State.LAST_ACK)]
        assert conn.segments_to_send(1.5) == [ours(ACK | PSH | FIN, 1, 2, b"z" * 50)]

    def test_retransmitted_fin_reacked(self) -> None:
        conn = close_wait()
        conn.receive_segment(peer(ACK | FIN, 1, 1), 1.5)
        assert conn.segments_to_send(1.5) == [ours(ACK, 1, 2)]
        assert conn.state is State.CLOSE_WAIT


class TestLastAck:
    def test_ack_of_fin_closes(self) -> None:
        conn = last_ack()
        assert conn.next_timer() == T_CW + RTO
        conn.receive_segment(peer(ACK, 2, 2), 1.5)
        assert conn.segments_to_send(1.5) == []
        closed_cleanly(conn)

    def test_rst_after_all_data_acked_closes_quietly(self) -> None:
        # RFC 9293 3.10.7.4 second: in LAST-ACK a RST just closes; every byte of ours
        # was acknowledged, only the FIN was not.
        conn = last_ack()
        conn.receive_segment(peer(RST, 2), 1.5)
        closed_cleanly(conn)

    def test_rst_with_data_unacknowledged_reports_the_reset(self) -> None:
        # Our data never reached the peer (it lost its state and answered RST): a clean
        # close would hide the loss, so the application hears of the reset, as from Linux
        # (tcp_reset: ECONNRESET in LAST-ACK). Found by chaos seed 299 (server restart).
        conn = close_wait()
        conn.send(b"never acknowledged")
        conn.shutdown(T_CW)
        conn.segments_to_send(T_CW)
        assert conn.state is State.LAST_ACK
        conn.receive_segment(peer(RST, 2), 1.5)
        failed_with(conn, ConnectionResetError)

    def test_fin_retransmitted_on_rto(self) -> None:
        conn = last_ack()
        conn.handle_timer(T_CW + RTO)
        assert conn.segments_to_send(T_CW + RTO) == [ours(ACK | FIN, 1, 2)]
        assert conn.next_timer() == T_CW + RTO + 2 * RTO


class TestCloseAndAbort:
    def test_close_with_unread_data_resets(self) -> None:
        # RFC 1122 4.2.2.13 / RFC 9293 3.6: closing with unread data sends a RST.
        conn = established()
        conn.receive_segment(peer(ACK | PSH, 1, 1, b"unread"), 1.0)
        conn.close(1.0)
        assert conn.segments_to_send(1.0) == [rst(L(1))]
        closed_cleanly(conn)

    @pytest.mark.parametrize(
        ("state", "snd_nxt"),
        [
            (State.SYN_RECEIVED, 1),
            (State.ESTABLISHED, 1),
            (State.FIN_WAIT_1, 2),
            (State.FIN_WAIT_2, 2),
            (State.CLOSE_WAIT, 1),
        ],
        ids=str,
    )
    def test_abort_sends_rst_seq_snd_nxt(self, state: State, snd_nxt: int) -> None:
        # RFC 9293 3.10.5: <SEQ=SND.NXT><CTL=RST> where the peer holds state.
        conn = FACTORIES[state]()
        conn.abort(3.0)
        assert conn.segments_to_send(3.0) == [rst(L(snd_nxt))]
        closed_cleanly(conn)

    @pytest.mark.parametrize(
        "state",
        [State.LISTEN, State.SYN_SENT, State.CLOSING, State.LAST_ACK, State.TIME_WAIT],
        ids=str,
    )
    def test_abort_without_rst(self, state: State) -> None:
        conn = FACTORIES[state]()
        conn.abort(3.0)
        assert conn.segments_to_send(3.0) == []
        closed_cleanly(conn)

    def test_abort_after_data_uses_snd_nxt(self) -> None:
        conn = established()
        conn.send(b"q" * 300)
        conn.segments_to_send(1.0)
        conn.abort(1.1)
        assert conn.segments_to_send(1.1) == [rst(L(301))]

    def test_data_after_close_draws_rst(self) -> None:
        conn = established()
        conn.close(T_EST)
        assert conn.segments_to_send(T_EST) == [ours(ACK | FIN, 1, 1)]
        conn.receive_segment(peer(ACK | PSH, 1, 2, b"late"), 1.0)
        assert conn.segments_to_send(1.0) == [rst(L(2))]
        closed_cleanly(conn)


# ------------------------------------------------------------------------------ half-open


class TestHalfOpen:
    @pytest.mark.parametrize("new_iss", [REMOTE_ISS + 1000, REMOTE_ISS + 2**31], ids=str)
    def test_restarted_peer_is_detected(self, new_iss: int) -> None:
        # RFC 9293 3.5.1 / RFC 5961 4: the peer forgot the connection and opens it again.
        local, _crashed = real_exchange(State.ESTABLISHED)
        reborn = Connection(
            PEER_CONFIG, local_port=REMOTE_PORT, remote_port=LOCAL_PORT, iss=new_iss & MASK
        )
        reborn.connect(2.0)
        (syn,) = deliver(reborn, local, 2.0, 2.25)
        assert syn.flags == SYN
        # The old connection answers with an ACK of what it really expects.
        assert deliver(local, reborn, 2.25, 2.5) == [ours(ACK, 1, 1)]
        assert local.state is State.ESTABLISHED
        # The new one sees an ACK for a SYN it never sent: <SEQ=SEG.ACK><CTL=RST>.
        assert deliver(reborn, local, 2.5, 2.75) == [
            Segment(REMOTE_PORT, LOCAL_PORT, R(1), 0, RST, 0)
        ]
        assert reborn.state is State.SYN_SENT
        failed_with(local, ConnectionResetError)
        # The new SYN, retransmitted, now finds no connection (the host answers for it).
        reborn.handle_timer(3.0)
        (syn2,) = reborn.segments_to_send(3.0)
        assert syn2.seq == new_iss & MASK
