"""Timers for a dead peer: zero-window probes, the user timeout, keepalive, SYN retries.

Segment tables on the per-state factories (tests/core/_factories.py): the peer is only the
segments a test feeds, so "the peer vanished" means nothing more is fed while the local
connection's timers run.
"""

from __future__ import annotations

import pytest
from _factories import CONFIG, T_EST, drain, established, peer, settle, syn_received

from utcp._config import Config
from utcp._connection import Connection
from utcp._errors import ConnectionTimedOut
from utcp._state import State
from utcp._wire import ACK, SYN, Segment


def run_timers(conn: Connection, until: float) -> list[tuple[float, Segment]]:
    """Fire every timer up to ``until`` with nothing arriving; return what went out when."""
    sent: list[tuple[float, Segment]] = []
    for _ in range(10_000):
        deadline = conn.next_timer()
        if deadline is None or deadline > until:
            return sent
        conn.handle_timer(deadline)
        sent += [(deadline, seg) for seg in conn.segments_to_send(deadline)]
    raise AssertionError("timers never went quiet")


def behind_zero_window(config: Config, now: float = 2.0) -> Connection:
    """ESTABLISHED; 100 bytes sent and acknowledged with a zero window at ``now``, 100 more
    queued behind it: the connection is probing the closed window."""
    conn = established(config)
    conn.send(b"a" * 100)
    assert [len(s.payload) for s in settle(conn, T_EST)] == [100]
    conn.receive_segment(peer(ACK, 1, 101, window=0), now)
    conn.send(b"b" * 100)
    assert settle(conn, now) == []
    assert conn.snd_wnd == 0 and conn.unsent == 100
    return conn


def probes(sent: list[tuple[float, Segment]]) -> list[float]:
    return [t for t, seg in sent if seg.flags == ACK and not seg.payload]


class TestZeroWindowDeadPeer:
    def test_unanswered_probes_count_toward_the_retransmission_limit(self) -> None:
        # RFC 9293 3.8.3 (R2) and 3.8.6.1: probes of a window that stays closed while the
        # peer says nothing are retransmissions like any other (Linux: tcp_retries2 bounds
        # icsk_probes_out). MUST-37 protects only a receiver that keeps answering.
        conn = behind_zero_window(CONFIG.replace(max_retransmissions=5))
        sent = run_timers(conn, 3600.0)
        assert len(probes(sent)) == 5
        assert conn.state is State.CLOSED
        assert isinstance(conn.error, ConnectionTimedOut)
        assert conn.error.reason == "zero-window probes unanswered"

    def test_answered_probes_never_time_out(self) -> None:
        # RFC 9293 3.8.6.1 (MUST-37): the window may stay closed indefinitely while the
        # receiver answers each probe.
        conn = behind_zero_window(CONFIG.replace(max_retransmissions=3))
        now = 2.0
        answered = 0
        while now < 3600.0:
            deadline = conn.next_timer()
            assert deadline is not None
            now = deadline
            conn.handle_timer(now)
            if probes([(now, s) for s in conn.segments_to_send(now)]):
                conn.receive_segment(peer(ACK, 1, 101, window=0), now + 0.1)
                answered += 1
        assert answered > 3
        assert conn.state is State.ESTABLISHED
        drain(conn)

    def test_user_timeout_covers_data_behind_a_closed_window(self) -> None:
        # RFC 9293 3.8.3 / RFC 5482: the user timeout bounds how long data waits for the
        # peer, also data the peer's closed window holds back (Linux applies
        # TCP_USER_TIMEOUT to window probes). It counts from the first unanswered probe.
        conn = behind_zero_window(CONFIG.replace(user_timeout=30.0))
        sent = run_timers(conn, 7200.0)
        first_probe = probes(sent)[0]
        assert conn.state is State.CLOSED
        assert isinstance(conn.error, ConnectionTimedOut)
        assert conn.error.reason == "user timeout"
        closed_at = sent[-1][0]  # the RST of the timed-out connection
        assert first_probe + 30.0 <= closed_at <= first_probe + 30.0 + CONFIG.max_rto

    def test_without_user_timeout_give_up_after_the_retransmission_limit(self) -> None:
        # Kernel-like settings (no user timeout, which utcp's defaults set to 30 s).
        config = Config(user_timeout=None)
        conn = behind_zero_window(config)
        sent = run_timers(conn, 24 * 3600.0)
        assert conn.state is State.CLOSED
        assert isinstance(conn.error, ConnectionTimedOut)
        assert len(probes(sent)) == config.max_retransmissions
        # Backed off to max_rto (60 s): about 15 minutes, not never.
        assert sent[-1][0] < 2.0 + 16 * config.max_rto

    def test_an_ack_resets_the_unanswered_probe_count(self) -> None:
        conn = behind_zero_window(CONFIG.replace(max_retransmissions=3))
        sent = run_timers(conn, 10.0)  # two probes (backed off from the RTO), unanswered
        assert len(probes(sent)) == 2
        last = sent[-1][0]
        conn.receive_segment(peer(ACK, 1, 101, window=0), last + 0.1)
        sent = run_timers(conn, 3600.0)
        assert len(probes(sent)) == 3  # three more unanswered ones before giving up
        assert conn.state is State.CLOSED

    def test_keepalive_stays_off_while_probes_watch_the_peer(self) -> None:
        # Linux (tcp_keepalive_timer) sends no keepalives while data is queued: the probe
        # timer watches the peer then, and counts toward the same limit.
        config = CONFIG.replace(keepalive=True, keepalive_idle=5.0, keepalive_interval=1.0)
        conn = behind_zero_window(config)
        sent = run_timers(conn, 3600.0)
        assert all(s.seq == probes_seq(conn) for _, s in sent if not s.flags & ~ACK)
        assert isinstance(conn.error, ConnectionTimedOut)
        assert conn.error.reason == "zero-window probes unanswered"


def probes_seq(conn: Connection) -> int:
    """A zero-window probe is <SEQ=SND.UNA-1> (RFC 9293 3.8.6.1, as Linux sends it)."""
    return (conn.iss + 100) & 0xFFFFFFFF


class TestSynRetries:
    def test_syn_ack_retransmitted_for_at_least_three_minutes(self) -> None:
        # RFC 9293 3.8.3 (MUST-23): R2 for a SYN segment lets it be retransmitted for at
        # least 3 minutes; the SYN-ACK is one.
        conn = syn_received()
        sent = run_timers(conn, 3600.0)
        synacks = [t for t, s in sent if s.flags == SYN | ACK]
        assert synacks[-1] < 180.0 and len(synacks) >= 7
        assert conn.state is State.CLOSED
        assert isinstance(conn.error, ConnectionTimedOut)
        assert conn.error.reason == "handshake"

    @pytest.mark.parametrize("timeout", [10.0, 300.0])
    def test_connect_timeout_is_the_applications_give_up(self, timeout: float) -> None:
        # MUST-23 lets the application close sooner; it may also wait longer.
        conn = Connection(CONFIG.replace(connect_timeout=timeout), local_port=1, remote_port=2)
        conn.connect(0.0)
        sent = [(0.0, s) for s in conn.segments_to_send(0.0)]
        sent += run_timers(conn, 3600.0)
        assert conn.state is State.CLOSED
        assert isinstance(conn.error, ConnectionTimedOut)
        assert conn.error.reason == "connect timeout"
        assert sent[-1][0] < timeout
