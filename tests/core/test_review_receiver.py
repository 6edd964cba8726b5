"""The receiving side against the RFCs: segment arrival, ACK generation, receive memory.

Segment-in / segment-out tables on the per-state factories (tests/core/_factories.py), in the
style of test_states.py; offsets ``L(n)``/``R(n)`` as there.
"""

from __future__ import annotations

from _factories import (
    PEER_MSS,
    PEER_WINDOW,
    PEER_WSCALE,
    T_EST,
    R,
    drain,
    established,
    local_ts,
    ours,
    peer,
    peer_syn,
    peer_ts,
    settle,
    syn_sent,
)

from utcp._state import State
from utcp._wire import ACK, SYN


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
