"""The receiving side against the RFCs: segment arrival, ACK generation, receive memory.

Segment-in / segment-out tables on the per-state factories (tests/core/_factories.py), in the
style of test_states.py; offsets ``L(n)``/``R(n)`` as there.
"""

from __future__ import annotations

from _factories import (
    PEER_WINDOW,
    T_EST,
    drain,
    established,
    local_ts,
    ours,
    peer,
    peer_ts,
    settle,
)

from utcp._state import State
from utcp._wire import ACK


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
