"""The timers of one connection when they fire, and the ones armed after each output pass.

``Connection.next_timer`` says when the earliest deadline is; ``handle_timer`` here runs
what is due, in this order: the user timeout (RFC 9293 3.8.3, RFC 5482), the connect or
handshake timeout, TIME-WAIT and FIN-WAIT-2, the delayed ACK (RFC 9293 3.8.6.3), the tail
loss probe (RFC 8985 7) and the retransmission timer (RFC 6298), the recovery's own timers,
then persist (RFC 9293 3.8.6.1) and keep-alive (RFC 9293 3.8.4). ``arm_idle_timers`` runs
at the end of every output pass (``Connection.segments_to_send``). Like ``_fastpath``,
these are functions of the connection, kept apart so that ``_connection.py`` stays small.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import ConnectionTimedOut
from ._seq import MASK
from ._state import HANDSHAKING, KEEPALIVE_STATES, SYNCHRONIZED, State
from ._wire import ACK

if TYPE_CHECKING:
    from ._connection import Connection


def handle_timer(conn: Connection, now: float) -> None:
    """``Connection.handle_timer``: run every timer due at ``now``. May create output."""
    if conn.state is State.CLOSED:
        return
    uto = conn._user_timeout_deadline()
    if uto is not None and now >= uto:
        # RFC 9293 3.8.3 / RFC 5482: data undelivered for the user timeout.
        conn._terminate(now, ConnectionTimedOut("user timeout"), rst=True)
        return
    if conn._connect_deadline is not None and now >= conn._connect_deadline:
        reason = "handshake" if conn._passive else "connect timeout"
        conn._terminate(now, ConnectionTimedOut(reason))
        return
    if conn._timewait_deadline is not None and now >= conn._timewait_deadline:
        conn._terminate(now, None)  # RFC 9293 3.10.8: TIME-WAIT timeout
        return
    if conn._finwait2_deadline is not None and now >= conn._finwait2_deadline:
        conn._terminate(now, None)
        return
    if conn._delack_deadline is not None and now >= conn._delack_deadline:
        conn._delack_deadline = None
        conn._ack_now = True
        conn._pingpong = False  # Linux: a delayed ACK had to go alone: not pingpong
    if conn.recovery.probe_timer_due(now):
        # RFC 8985 7.3: the probe timeout: a probe goes out, and the RTO starts over.
        conn._rto_deadline = now + conn.rtt.current_rto()
    if conn._rto_deadline is not None and now >= conn._rto_deadline:
        _on_rto(conn, now)
        if conn.closed:
            return
    conn.recovery.on_timer(now, snd_una=conn._snd_una, snd_nxt=conn._snd_nxt, sack_ok=conn.sack_ok)
    if conn._persist_deadline is not None and now >= conn._persist_deadline:
        _on_persist(conn, now)
    if conn._keepalive_deadline is not None and now >= conn._keepalive_deadline:
        _on_keepalive(conn, now)


def _on_rto(conn: Connection, now: float) -> None:
    """RFC 6298 (5.4)-(5.6) and RFC 9293 3.8.3 (R2)."""
    conn.stats.rto_expiries += 1
    if conn.state in HANDSHAKING:
        conn._syn_retries += 1
        conn.rtt.back_off()
        conn._syn_due = True
        conn._rto_deadline = None
        return
    conn._rto_retries += 1
    if conn.snd_wnd == 0 and conn._last_recv_time > conn._last_rto_time:
        # RFC 9293 3.8.6.1: with the peer's window closed, a retransmission is a window
        # probe, and the connection is kept while the peer answers them: an expiry the
        # peer answered since the last one does not count toward the limit (as Linux's
        # retransmission timer treats a zero window).
        conn._rto_answered += 1
    conn._last_rto_time = now
    if conn._rto_retries - conn._rto_answered > conn.config.max_retransmissions:
        conn._terminate(now, ConnectionTimedOut("retransmission limit"), rst=True)
        return
    conn.recovery.on_rto(
        now,
        snd_una=conn._snd_una,
        snd_nxt=conn._snd_nxt,
        repeated=conn._rto_retries > 1,
        tsval=conn._ts_now(now) if conn.ts_ok else None,
    )
    conn.rtt.back_off()
    conn._rto_deadline = now + conn.rtt.current_rto()


def _on_persist(conn: Connection, now: float) -> None:
    """RFC 9293 3.8.6.1 zero-window probe, also the SWS override timeout (3.8.6.2.1)."""
    conn._persist_deadline = None
    # RFC 9293 3.8.3 (R2) and 3.8.6.1: a probe is a retransmission of the window
    # question; while the peer answers none of them they count toward the same limit
    # as retransmissions (Linux: icsk_probes_out against tcp_retries2). An answer resets
    # the count (_ack_accepted), so a live peer may keep its window closed forever
    # (MUST-37).
    if conn._probes_out >= conn.config.max_retransmissions:
        conn._terminate(now, ConnectionTimedOut("zero-window probes unanswered"), rst=True)
        return
    if conn._probes_out == 0:
        conn._probes_since = now
    conn._probes_out += 1
    conn._persist_backoff += 1
    conn.stats.window_probes += 1
    conn._force_send = True


def _on_keepalive(conn: Connection, now: float) -> None:
    """RFC 1122 4.2.3.6 / RFC 9293 3.8.4."""
    conn._keepalive_deadline = None
    if conn._keepalive_probes >= conn.keepalive_count:
        conn._terminate(now, ConnectionTimedOut("keepalive"), rst=True)
        return
    conn._keepalive_probes += 1
    conn.stats.keepalive_probes += 1
    conn._last_keepalive_time = now
    # <SEQ=SND.NXT-1>, no data: the peer answers with an ACK.
    conn._out.append(conn._segment(ACK, (conn.snd_nxt - 1) & MASK, b"", now))
    conn._ack_sent()


def arm_idle_timers(conn: Connection, now: float) -> None:
    """Arm persist and keepalive after an output pass, from the resulting state."""
    sb, state = conn.recovery.scoreboard, conn.state
    idle = conn._snd_nxt >= conn._snd_una and sb.pipe == 0 and not len(sb)
    unsent = idle and conn.sndbuf.end > max(conn._snd_nxt, 1)
    # Persist: data waiting, nothing in flight, and the window holds it back.
    if idle and state in SYNCHRONIZED and (unsent or (conn._fin_queued and conn._fin_pending())):
        if conn._persist_deadline is None:
            rto = conn.rtt.current_rto() * (1 << min(conn._persist_backoff, 16))
            conn._persist_deadline = now + min(max(rto, conn.config.min_rto), conn.config.max_rto)
    else:
        conn._persist_deadline = None
    # Keepalives only while nothing is queued: with data waiting, the RTO or the persist
    # timer watches the peer and counts toward max_retransmissions (as in Linux's
    # tcp_keepalive_timer).
    if conn.keepalive and idle and not unsent and state in KEEPALIVE_STATES:
        if conn._keepalive_probes:
            base = conn.keepalive_interval
            since = conn._last_keepalive_time
        else:
            base = conn.keepalive_idle
            since = conn._last_recv_time
        conn._keepalive_deadline = since + base
    else:
        conn._keepalive_deadline = None
