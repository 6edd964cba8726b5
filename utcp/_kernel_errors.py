"""Errors the kernel reports about segments a connection sent: ICMP errors and failed sends.

``Connection.on_kernel_error`` hands them here. RFC 1122 4.2.3.9 sorts them into hard and
soft errors, RFC 5461 describes how TCP stacks react to them today, and RFC 5927 says which
to believe: only those that match the connection's 4-tuple (the host checked it) and quote a
sequence number that is in flight.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING

from ._state import State

if TYPE_CHECKING:
    from ._connection import Connection

log = logging.getLogger("utcp.core")

# RFC 1122 4.2.3.9 makes network and host unreachable soft errors; RFC 5461 4 describes the
# widely implemented change that fails a connection request on them instead of waiting
# for the connect timeout (Linux does so at the first one). A connect fails once the same
# kind of error has kept answering our SYNs for this long (the third SYN, with the default
# 1 s initial RTO), so one transient routing hiccup does not.
SYN_SOFT_ERROR_GRACE = 3.0
# A port unreachable in a synchronized state means that the peer's UDP port has closed:
# its process is gone (a kernel TCP would have sent a RST). RFC 1122 4.2.3.9 calls it a
# hard error; we fail the connection once this many have answered our segments, the first
# and the last at least one RTO apart, with nothing from the peer in between, so that a
# stray or forged one, or a restart of the peer's socket, does not.
PORT_UNREACHABLE_COUNT = 3
ERROR_TEXT = {
    errno.ECONNREFUSED: "connection refused (port unreachable)",
    errno.ENETUNREACH: "network is unreachable",
    errno.EHOSTUNREACH: "host is unreachable",
    errno.EHOSTDOWN: "host is down",
    errno.EACCES: "administratively prohibited",
    errno.EPERM: "administratively prohibited",
    errno.EMSGSIZE: "datagram too big for the path (EMSGSIZE)",
}


def kernel_error(conn: Connection, now: float, errno_: int, seq: int | None) -> bool:
    """``Connection.on_kernel_error``: see its docstring."""
    state = conn.state
    if state in (State.CLOSED, State.LISTEN, State.TIME_WAIT):
        conn._drop("kernel error: nothing in flight")
        return False
    if seq is not None:
        off = conn._ack_offset(seq)
        if state in (State.SYN_SENT, State.SYN_RECEIVED):
            ok = off == 0  # RFC 5927 4.1: only our SYN (or SYN-ACK), SEQ = ISS
        else:
            # RFC 5927 4.1 asks for SND.UNA =< SEG.SEQ < SND.NXT. Like Linux (whose
            # check includes SND.NXT) we also take SND.NXT, the SEQ of every pure ACK,
            # and SND.UNA - 1, that of keep-alives and window probes (RFC 9293 3.8.4,
            # 3.8.6.1): for a receiver those are all it sends.
            ok = conn._snd_una - 1 <= off <= conn._snd_nxt
        if not ok:
            conn._drop("kernel error: sequence number not in flight (RFC 5927)")
            return False
    conn.stats.kernel_errors += 1
    if errno_ == errno.EMSGSIZE:
        # Too big for the path or the socket: the segment was not sent, so the
        # connection would stall on it. Said once, counted every time, and kept as
        # the soft error that a timeout will name.
        if not conn.stats.emsgsize_errors:
            log.warning(
                "%d>%d: segments of %d bytes are too big to send (EMSGSIZE); lower "
                "Config.mss or the path MTU",
                conn.local_port,
                conn.remote_port,
                conn.effective_mss,
            )
        conn.stats.emsgsize_errors += 1
    elif errno_ == errno.ECONNREFUSED:
        if state is State.SYN_SENT:
            # RFC 1122 4.2.3.9: port unreachable is a hard error; the connect fails now.
            conn._terminate(now, ConnectionRefusedError(errno_, ERROR_TEXT[errno_]))
        elif state is State.SYN_RECEIVED:
            # The client of a passive open went away: drop the half-open connection
            # (as Linux drops the request); an active one (simultaneous open) is refused.
            refused = ConnectionRefusedError(errno_, ERROR_TEXT[errno_])
            conn._terminate(now, None if conn._passive else refused)
        else:
            _port_unreachable(conn, now)
        return True
    # Soft errors (RFC 1122 4.2.3.9, RFC 5461 2.2): remembered, like SO_ERROR's soft
    # error, and named when the connection times out.
    if conn.soft_error != errno_ or conn._last_recv_time > conn._soft_error_time:
        # In SYN-SENT the grace runs from the SYN the error answered (the latest sent), not
        # from when the error was read: a busy endpoint reads the first one late, and the
        # third SYN's error, read at once, would then fall short of the grace by that much.
        sent = conn._syn_sent_at
        conn._soft_error_first = sent if state is State.SYN_SENT and sent is not None else now
    conn.soft_error = errno_
    conn._soft_error_time = now
    if state is State.SYN_SENT and now - conn._soft_error_first >= SYN_SOFT_ERROR_GRACE:
        # RFC 5461 4: the connection request fails with the error after the grace.
        text = ERROR_TEXT.get(errno_, f"error {errno.errorcode.get(errno_, errno_)}")
        conn._terminate(now, OSError(errno_, text))
    return True


def _port_unreachable(conn: Connection, now: float) -> None:
    """A port unreachable in a synchronized state (PORT_UNREACHABLE_COUNT)."""
    first = conn._unreachable_first
    if first is None or conn._last_recv_time > first:
        first = conn._unreachable_first = now
        conn._unreachable_count = 0
        conn._unreachable_span = conn.rtt.current_rto()
    conn._unreachable_count += 1
    if conn._unreachable_count >= PORT_UNREACHABLE_COUNT and now - first >= conn._unreachable_span:
        conn._terminate(
            now,
            ConnectionResetError(
                errno.ECONNRESET,
                "the peer's UDP port is closed (port unreachable): its process is gone",
            ),
        )
