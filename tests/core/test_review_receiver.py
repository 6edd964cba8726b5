"""The receiving side against the RFCs: segment arrival, ACK generation, receive memory.

Segment-in / segment-out tables on the per-state factories (tests/core/_factories.py), in the
style of test_states.py; offsets ``L(n)``/``R(n)`` as there.
"""

from __future__ import annotations

import bisect
import random

import pytest
from _factories import (
    CONFIG,
    LOCAL_ISS,
    LOCAL_PORT,
    PEER_MSS,
    PEER_WINDOW,
    PEER_WSCALE,
    REMOTE_PORT,
    T_EST,
    T_SYN,
    T_TW,
    L,
    R,
    drain,
    established,
    listen,
    local_ts,
    ours,
    peer,
    peer_syn,
    peer_ts,
    settle,
    syn_received,
    syn_sent,
    time_wait,
)

from utcp._buffers import BLOCK_OVERHEAD, _SortedStarts
from utcp._connection import STRETCH_ACK_LIMIT, Connection
from utcp._events import DataReceived, SendSpaceAvailable
from utcp._host import Host
from utcp._state import State
from utcp._wire import ACK, FIN, PSH, RST, SYN, Segment, decode_untrusted, encode


def rst_from_us(seq: int) -> Segment:
    """<SEQ=seq><CTL=RST> from the local port."""
    return Segment(LOCAL_PORT, REMOTE_PORT, seq, 0, RST, 0)


class TestAckValidatedBeforeStateChanges:
    def test_ack_of_unsent_data_leaves_ts_recent_alone(self) -> None:
        # RFC 9293 3.10.7.4 fifth: SEG.ACK > SND.NXT: send an ACK, drop the segment,
        # return; RFC 7323 4.3: TS.Recent is taken only from a segment that is kept.
        conn = established(ts=True)
        ts_recent, last_recv = conn.ts_recent, conn._last_recv_time
        forged = peer(ACK, 1, 5000, timestamps=(peer_ts(T_EST) + 1_000_000, 0))
        conn.receive_segment(forged, 2.0)
        assert conn.ts_recent == ts_recent
        assert conn._last_recv_time == last_recv
        out = settle(conn, 2.0)
        assert out == [ours(ACK, 1, 1, timestamps=(local_ts(conn, 2.0), ts_recent))]
        # The peer's real next segment is not failed by PAWS.
        conn.receive_segment(peer(ACK, 1, 1, b"x", timestamps=(peer_ts(2.0), 0)), 2.0)
        assert conn.readable == 1

    def test_ack_of_unsent_data_does_not_reset_keepalive_or_probe_counts(self) -> None:
        conn = established()
        conn._keepalive_probes = 2
        conn._probes_out = 3
        conn.receive_segment(peer(ACK, 1, 5000), 2.0)
        assert conn._keepalive_probes == 2 and conn._probes_out == 3
        assert conn.state is State.ESTABLISHED
        drain(conn)

    def test_ack_of_unsent_data_leaves_the_send_window_alone(self) -> None:
        conn = established()
        conn.receive_segment(peer(ACK, 1, 5000, window=3), 2.0)
        assert conn.snd_wnd == PEER_WINDOW << 7
        drain(conn)


class TestSimultaneousOpen:
    def test_window_of_the_peers_syn_ack_is_not_scaled(self) -> None:
        # RFC 7323 2.2 (a MUST): the window field of a segment with SYN is never scaled,
        # also the SYN-ACK that completes a simultaneous open (RFC 9293 3.5 figure 8).
        conn = syn_sent()
        conn.receive_segment(peer_syn(), 0.1)
        assert [s.flags for s in settle(conn, 0.1)] == [SYN | ACK]
        assert conn.state is State.SYN_RECEIVED
        synack = peer(SYN | ACK, 0, 1, window=1000, mss=PEER_MSS, wscale=PEER_WSCALE)
        conn.receive_segment(synack, 0.3)
        assert conn.state is State.ESTABLISHED
        assert conn.snd_wnd == 1000
        # The next segment's window is scaled.
        conn.receive_segment(peer(ACK, 1, 1, window=1000), 0.4)
        assert conn.snd_wnd == 1000 << PEER_WSCALE
        drain(conn)

    def test_data_on_the_peers_syn_ack_is_delivered(self) -> None:
        conn = syn_sent()
        conn.receive_segment(peer_syn(), 0.1)
        settle(conn, 0.1)
        conn.receive_segment(peer(SYN | ACK, 0, 1, b"hello", mss=PEER_MSS, wscale=7), 0.3)
        assert conn.state is State.ESTABLISHED
        assert conn.receive() == b"hello"
        assert conn.rcv_nxt == R(6)
        drain(conn)


class TestMinorRows:
    def test_rst_at_rcv_nxt_does_not_end_time_wait(self) -> None:
        # RFC 1337 hazard H1 ("TIME-WAIT assassination"), fix F1: ignore RST segments in
        # TIME-WAIT, so an old duplicate RST cannot cut 2 MSL short (Linux with
        # net.ipv4.tcp_rfc1337=1; its default 0 lets the RST kill the TIME-WAIT socket).
        conn = time_wait()
        conn.receive_segment(peer(RST, 2), 2.0)
        conn.receive_segment(peer(RST | ACK, 2, 2), 2.1)
        assert conn.segments_to_send(2.1) == []
        assert conn.state is State.TIME_WAIT
        assert conn.next_timer() == T_TW + 2 * CONFIG.msl

    @pytest.mark.parametrize(
        ("flags", "payload"), [(ACK, b"data"), (ACK, b""), (ACK | FIN, b"")], ids=str
    )
    def test_segment_without_timestamp_dropped_once_negotiated(
        self, flags: int, payload: bytes
    ) -> None:
        # RFC 7323 3.2: once TSopt was negotiated, a non-RST segment without one SHOULD be
        # silently dropped (it would bypass PAWS).
        conn = established(ts=True)
        conn.receive_segment(peer(flags, 1, 1, payload, window=3), 2.0)
        assert conn.segments_to_send(2.0) == []
        assert conn.readable == 0 and conn.state is State.ESTABLISHED
        assert conn.snd_wnd == PEER_WINDOW << PEER_WSCALE
        assert conn.stats.drops["no timestamp"] == 1

    def test_rst_without_timestamp_still_processed(self) -> None:
        conn = established(ts=True)
        conn.receive_segment(peer(RST, 1), 2.0)
        assert conn.state is State.CLOSED
        drain(conn)

    def test_segment_without_syn_or_ack_dropped_by_listening_host(self) -> None:
        # RFC 9293 3.10.7.2: in LISTEN, "any other control or text-bearing segment (not
        # containing SYN) must have an ACK and thus would be discarded by the ACK
        # processing" (fourth: drop it and return); only an ACK draws a RST.
        host = Host(CONFIG, address=("198.18.0.2", LOCAL_PORT), isn_key=b"k" * 16)
        host.listen()
        src = ("198.18.0.1", REMOTE_PORT)
        for seg in (peer(0, 5, b"data"), peer(FIN, 5), peer(PSH, 5, payload=b"x")):
            host.receive_datagrams([(encode(seg), src)], 1.0)
            assert host.datagrams_to_send(1.0) == []
        host.receive_datagrams([(encode(peer(ACK, 5, 90)), src)], 1.0)
        assert [decode_untrusted(d).flags for d, _ in host.datagrams_to_send(1.0)] == [RST]
        assert host.connections == {}

    def test_segment_without_syn_or_ack_dropped_in_listen(self) -> None:
        conn = listen()
        conn.receive_segment(peer(FIN, 5, payload=b"x"), 1.0)
        assert conn.segments_to_send(1.0) == []
        assert conn.state is State.LISTEN

    def test_syn_received_acks_an_unacceptable_segment(self) -> None:
        # RFC 9293 3.10.7.4 first: an unacceptable segment (here beyond the window) draws
        # <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>, in SYN-RECEIVED too, and is dropped.
        conn = syn_received()
        conn.receive_segment(peer(ACK, 1 << 20, 1, b"late"), 0.2)
        assert conn.segments_to_send(0.2) == [ours(ACK, 1, 1)]
        assert conn.state is State.SYN_RECEIVED
        assert conn.readable == 0

    def test_without_window_scaling_accept_only_what_was_advertised(self) -> None:
        # RFC 9293 3.10.7.4: the acceptance test uses RCV.WND, the window we advertised;
        # without scaling that is at most 65535 (RFC 7323 2.2), whatever the buffer size.
        conn = established(wscale=None)
        conn.receive_segment(peer(ACK, 1, 1, b"a" * 1000), 1.0)
        conn.receive_segment(peer(ACK, 1001, 1, b"b" * 1000), 1.0)
        out = conn.segments_to_send(1.0)
        conn.handle_timer(1.0 + CONFIG.delayed_ack)
        ack = (out + conn.segments_to_send(1.0 + CONFIG.delayed_ack))[-1]
        assert ack.window == 65535 and ack.ack == R(2001)
        assert conn.rcv_wnd <= 65535
        beyond = 2001 + 65535 + 1000  # inside the 256 KiB buffer, outside what we offered
        conn.receive_segment(peer(ACK, beyond, 1, b"c" * 100), 1.1)
        assert conn.segments_to_send(1.1) == [ours(ACK, 1, 2001, window=65535)]
        assert conn.rcvbuf.ooo_bytes == 0
        drain(conn)


class TestAfterClose:
    def test_syn_ack_after_close_in_syn_sent_draws_rst_through_host(self) -> None:
        # RFC 9293 3.10.4: CLOSE in SYN-SENT deletes the TCB; 3.10.7.1: a segment for no
        # connection with ACK set draws <SEQ=SEG.ACK><CTL=RST> (Linux answers the same).
        host = Host(
            CONFIG,
            address=("198.18.0.2", LOCAL_PORT),
            isn_key=b"k" * 16,
            iss_function=lambda _id, _now: LOCAL_ISS,
        )
        server = ("198.18.0.1", REMOTE_PORT)
        conn = host.connect(server, T_SYN)
        (syn,) = [decode_untrusted(d) for d, _ in host.datagrams_to_send(T_SYN)]
        assert syn.flags == SYN
        conn.close(0.1)
        host.touch(conn)  # an application call on a connection the host owns
        assert host.datagrams_to_send(0.1) == []
        assert host.connections == {}
        synack = peer(SYN | ACK, 0, 1, mss=PEER_MSS, wscale=PEER_WSCALE)
        host.receive_datagrams([(encode(synack), server)], 0.2)
        out = host.datagrams_to_send(0.2)
        assert [(decode_untrusted(d), a) for d, a in out] == [(rst_from_us(L(1)), server)]


MSS = 1400  # effective MSS of the factories' connection without timestamps
QUICK = CONFIG.replace(quick_acks=16)  # the factories turn quick-ACK mode off


def feed_data(conn: Connection, start: int, sizes: list[int], now: float) -> int:
    """Feed in-order segments of ``sizes`` bytes from offset ``start`` as one batch; return
    the offset after them."""
    for n in sizes:
        conn.receive_segment(peer(ACK, start, 1, b"d" * n), now)
        start += n
    return start


def use_up_quick_acks(conn: Connection, now: float) -> int:
    """Feed 1-byte segments until one is no longer acknowledged at once, then let the
    delayed ACK go; return the next offset."""
    nxt = 1
    for _ in range(100):
        nxt = feed_data(conn, nxt, [1], now)
        if not conn.segments_to_send(now):
            break
    conn.handle_timer(now + CONFIG.delayed_ack)
    assert len(conn.segments_to_send(now + CONFIG.delayed_ack)) == 1
    drain(conn)
    return nxt


class TestQuickAck:
    def test_first_data_segments_acknowledged_at_once(self) -> None:
        # Linux's quick-ACK mode (tcp_incr_quickack): the first data segments of a
        # connection are acknowledged at once, so the sender's slow start is not paced by
        # our delayed-ACK timer; RFC 5681 4.2 lets a receiver ACK more often than every
        # second segment. Bounded like Linux: rcv_wnd / (2 * MSS), at least 2, at most 16.
        conn = established(QUICK)
        acked_at_once = 0
        nxt = 1
        for i in range(20):
            nxt = feed_data(conn, nxt, [10], 1.0 + i * 0.01)
            out = conn.segments_to_send(1.0 + i * 0.01)
            if out:
                assert [(s.flags, s.ack) for s in out] == [(ACK, R(nxt))]
                acked_at_once += 1
        assert acked_at_once == 16
        drain(conn)

    def test_quick_acks_again_after_an_idle_period(self) -> None:
        # Linux: data after a pause longer than the RTO re-enters quick-ACK mode.
        conn = established(QUICK)
        nxt = use_up_quick_acks(conn, 1.0)
        nxt = feed_data(conn, nxt, [10], 1.5)
        assert conn.segments_to_send(1.5) == []  # within the RTO: delayed
        conn.handle_timer(1.5 + CONFIG.delayed_ack)
        conn.segments_to_send(1.5 + CONFIG.delayed_ack)
        later = 1.5 + conn.rtt.current_rto() + 0.1
        nxt = feed_data(conn, nxt, [10], later)
        assert [(s.flags, s.ack) for s in conn.segments_to_send(later)] == [(ACK, R(nxt))]
        drain(conn)

    def test_no_quick_acks_for_request_response(self) -> None:
        # Linux's "pingpong" mode: when we answer data with data within the delayed-ACK
        # time, our replies carry the ACKs, so requests are not acknowledged alone.
        conn = established(QUICK)
        nxt = feed_data(conn, 1, [10], 1.0)
        conn.send(b"reply")
        (reply,) = conn.segments_to_send(1.01)
        assert reply.payload == b"reply" and reply.ack == R(nxt)
        conn.receive_segment(peer(ACK, nxt, 6), 1.5)
        later = 10.0
        nxt = feed_data(conn, nxt, [10], later)
        assert conn.segments_to_send(later) == []
        conn.send(b"reply")
        (reply,) = conn.segments_to_send(later + 0.01)
        assert reply.ack == R(nxt)
        drain(conn)


class TestStretchAcks:
    def test_one_ack_per_batch_covering_every_full_sized_segment(self) -> None:
        # RFC 5681 4.2 / RFC 9293 3.8.6.3 (RFC 1122 4.2.3.2): an ACK for at least every
        # second full-sized segment. A batch the host feeds at once is acknowledged once,
        # after the whole batch, with the cumulative ACK of its end (as Linux does for a
        # GRO batch): fewer ACKs, and none of the batch's segments waits for the timer.
        conn = established()
        nxt = 1
        end = feed_data(conn, nxt, [MSS] * 5, 2.0)
        out = conn.segments_to_send(2.0)
        assert [(s.flags, s.ack, bytes(s.payload)) for s in out] == [(ACK, R(end), b"")]
        assert conn.next_timer() is None
        # A batch of one full-sized segment (in a dense flow) waits for the delayed-ACK timer.
        end2 = feed_data(conn, end, [MSS], 2.0)
        assert conn.segments_to_send(2.0) == []
        assert conn.next_timer() == 2.0 + CONFIG.delayed_ack
        conn.handle_timer(2.0 + CONFIG.delayed_ack)
        assert [s.ack for s in conn.segments_to_send(2.0 + CONFIG.delayed_ack)] == [R(end2)]
        drain(conn)

    def test_a_long_batch_draws_an_ack_per_stretch_limit(self) -> None:
        # One ACK per batch, but no ACK covers much more than STRETCH_ACK_LIMIT bytes: a
        # batch of 120 full-sized segments (168,000 bytes) draws one ACK as each 64 KiB is
        # reached (before the next segment) and one at the end of the batch.
        conn = established()
        nxt = 1
        end = feed_data(conn, nxt, [MSS] * 120, 2.0)
        acks = [s.ack for s in conn.segments_to_send(2.0)]
        per_ack = -(-STRETCH_ACK_LIMIT // MSS) * MSS  # the limit, in whole segments
        assert acks == [R(nxt + per_ack), R(nxt + 2 * per_ack), R(end)]
        drain(conn)

    def test_data_and_fin_of_one_segment_share_one_ack(self) -> None:
        conn = established()
        nxt = 1
        conn.receive_segment(peer(ACK, nxt, 1, b"d" * MSS), 2.0)
        conn.receive_segment(peer(ACK | FIN, nxt + MSS, 1, b"d" * MSS), 2.0)
        out = conn.segments_to_send(2.0)
        assert [s.ack for s in out] == [R(nxt + 2 * MSS + 1)]
        drain(conn)

    def test_out_of_order_segments_of_a_batch_each_draw_an_ack(self) -> None:
        # RFC 5681 4.2: an out-of-order segment SHOULD draw an immediate duplicate ACK.
        conn = established()
        nxt = 1
        feed_data(conn, nxt + MSS, [MSS] * 3, 2.0)
        out = conn.segments_to_send(2.0)
        assert [s.ack for s in out] == [R(nxt)] * 3
        assert [len(s.sack_blocks[0]) and s.sack_blocks[0][1] for s in out] == [
            R(nxt + 2 * MSS),
            R(nxt + 3 * MSS),
            R(nxt + 4 * MSS),
        ]
        drain(conn)


class TestReceiveMemory:
    def test_out_of_order_memory_is_capped_dropping_the_highest_blocks(self) -> None:
        # A peer sending 1-byte segments at alternate offsets: each block is charged its
        # real cost (payload + BLOCK_OVERHEAD, like Linux's truesize) and the total is
        # capped; above it the highest blocks go (RFC 2018 8 allows reneging).
        conn = established()
        limit = conn.rcvbuf.memory_limit
        assert limit is not None
        for i in range(5000):
            conn.receive_segment(peer(ACK, 3 + 2 * i, 1, b"x"), 1.0)
        rb = conn.rcvbuf
        assert rb.ooo_memory <= limit
        assert rb.blocks == limit // (1 + BLOCK_OVERHEAD)
        assert rb.held(3, 4) == (3, 4)  # the lowest blocks are kept
        assert rb.held(3 + 2 * 4999, 3 + 2 * 4999 + 1) is None
        assert rb.reneged_bytes == 5000 - rb.blocks
        drain(conn)

    def test_a_full_window_of_full_sized_segments_is_not_reneged(self) -> None:
        conn = established()
        window = conn.rcv_wnd
        off = 1 + MSS  # a hole of one segment, then the rest of the window
        while off + MSS <= 1 + window:
            conn.receive_segment(peer(ACK, off, 1, b"f" * MSS), 1.0)
            off += MSS
        assert conn.rcvbuf.reneged_bytes == 0
        conn.receive_segment(peer(ACK, 1, 1, b"f" * MSS), 1.1)
        assert conn.readable == off - 1
        drain(conn)

    def test_data_events_bounded_while_nobody_reads(self) -> None:
        # Events are bounded by state, not by traffic: one DataReceived (and one
        # SendSpaceAvailable) waits until the application takes it.
        conn = established()
        conn.send(b"s" * 3000)
        conn.segments_to_send(1.0)
        for i in range(200):
            conn.receive_segment(peer(ACK, 1 + i, 1 + 10 * (i + 1), b"d"), 1.0)
        events = drain(conn)
        assert events.count(DataReceived()) == 1
        assert events.count(SendSpaceAvailable()) == 1
        conn.receive_segment(peer(ACK, 201, 2501, b"d"), 1.1)
        assert drain(conn) == [SendSpaceAvailable(), DataReceived()]

    def test_sorted_starts_agree_with_a_sorted_list_across_bucket_splits(self) -> None:
        # The out-of-order index answers floor/higher/first/last in O(log n); checked here
        # against a plain sorted list with tiny buckets so every split and merge happens.
        class Tiny(_SortedStarts):
            LOAD = 2

        rng = random.Random(5)
        index, model = Tiny(), []
        for _ in range(3000):
            x = rng.randrange(500)
            if x in model:
                index.remove(x)
                model.remove(x)
            else:
                index.add(x)
                bisect.insort(model, x)
            q = rng.randrange(-5, 505)
            below = [v for v in model if v <= q]
            above = [v for v in model if v > q]
            assert index.floor(q) == (below[-1] if below else None)
            assert index.higher(q) == (above[0] if above else None)
            assert index.first() == (model[0] if model else None)
            assert index.last() == (model[-1] if model else None)
            assert len(index) == len(model)
