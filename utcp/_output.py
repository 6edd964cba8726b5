"""New data out of the send buffer: the segments one output pass sends after its
retransmissions. No I/O, like the core.

Reading list: RFC 9293 3.7.4 (Nagle), 3.8.6.1 (zero window probing), 3.8.6.2.1 (sender
silly window avoidance); RFC 8985 7.3 (a probe of new data).

Theory of operation. ``Connection._output_data`` calls :func:`new_data` once per pass (and
again for a tail loss probe). Everything a segment depends on besides its offsets is
constant for the pass: no input arrives during output, and the FIN ends it. So the pass
takes the congestion budget and the pacing rate once (``LossRecovery.begin_new_data``,
decremented by each send), and after the first segment the others repeat its
acknowledgment, window and timestamps instead of computing them again (while no SACK blocks
are due, which depend on the payload size). The segments on the wire are exactly those of
a pass computing everything per segment (tests/core/test_bulk_segments.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _fastopen
from ._seq import MASK
from ._state import CAN_OUTPUT_DATA
from ._wire import ACK, FIN, PSH, Segment

if TYPE_CHECKING:
    from ._connection import Connection

# RFC 9293 3.8.6.2.1: Fs, the fraction of the peer's largest window worth sending alone.
SWS_FRACTION = 0.5


def new_data(
    conn: Connection, out: list[Segment], now: float, force: bool, probe: bool = False
) -> None:
    """Append to ``out`` the new data (and FIN) the windows, the pacer and Nagle let go now.

    ``force``: a persist or probe timeout wants one segment even if Nagle or the window
    would hold it (a zero-window probe if nothing fits); ``probe``: one segment of a tail
    loss probe, outside the congestion budget.
    """
    if conn.state not in CAN_OUTPUT_DATA and not _fastopen.sends_early(conn):
        return
    sb, rec, mss = conn.scoreboard, conn.recovery, conn.effective_mss
    data_end = conn.sndbuf.end
    wnd_edge = conn._snd_una + conn.snd_wnd
    fin_pending = conn._fin_pending()
    rec.begin_new_data(conn.sndbuf.capacity)
    like: Segment | None = None
    while True:
        nxt = max(conn._snd_nxt, 1)
        queued = data_end - nxt
        fin_to_send = fin_pending and nxt == data_end
        if queued <= 0 and not fin_to_send:
            return
        cwnd_room = mss if probe else rec.new_data_room(now)
        usable = min(wnd_edge - nxt, cwnd_room)
        n = max(0, min(queued, usable, mss))
        if queued > 0 and not should_send(conn, n, queued, nxt, force, mss):
            if force and not n and not probe:
                # RFC 9293 3.8.6.1: zero window probe <SEQ=SND.UNA-1> draws an ACK.
                out.append(conn._segment(ACK, (conn.snd_una - 1) & MASK, b"", now))
            return
        # RFC 9293 3.8.6.1: the FIN occupies sequence space and waits for the peer's
        # window like data (a receiver rejects SEG.LEN 1 with RCV.WND 0); Linux's send
        # window test counts it too.
        fin = (
            fin_pending
            and nxt + n == data_end
            and nxt + n < wnd_edge
            and (n > 0 or cwnd_room > 0 or not sb.pipe)
        )
        if n == 0 and not fin:
            if force and not probe and fin_to_send and nxt >= wnd_edge:
                # A persist timeout with only the FIN left: probe the window.
                out.append(conn._segment(ACK, (conn.snd_una - 1) & MASK, b"", now))
            return
        force = False
        end = nxt + n + (1 if fin else 0)
        if like is None:
            seg = conn._data_segment(nxt, end, fin, now)
            if not (conn.sack_ok and (conn.rcvbuf.has_gap or conn._dsack)):
                like = seg
        else:
            seg = _repeat(conn, like, nxt, end, fin)
        out.append(seg)
        conn._snd_nxt = end
        if fin:
            conn._fin_offset = end - 1
        rec.on_new_data_sent(nxt, end, fin, now)
        conn.stats.bytes_sent += n
        if probe:
            return
        if conn._rto_deadline is None:
            conn._rto_deadline = now + conn.rtt.current_rto()
        if conn._unacked_since is None:
            conn._unacked_since = now
        if fin:
            return


def should_send(conn: Connection, n: int, queued: int, nxt: int, force: bool, mss: int) -> bool:
    """Sender-side silly window avoidance and Nagle (RFC 9293 3.8.6.2.1, 3.7.4); ``mss``
    is the connection's effective MSS."""
    if n <= 0:
        return False
    if n >= mss or force:
        return True
    nothing_in_flight = nxt >= conn._snd_nxt and max(conn._snd_una, 1) >= conn._snd_nxt
    nagle_ok = conn.nodelay or nothing_in_flight
    if n == queued and nagle_ok:
        return True  # all queued data, pushed
    return nagle_ok and n >= conn.max_snd_wnd * SWS_FRACTION


def _repeat(conn: Connection, like: Segment, start: int, end: int, fin: bool) -> Segment:
    """What ``conn._data_segment`` would make of offsets [start, end) later in the pass
    that made ``like`` (a segment without SACK blocks): ``_segment`` would fill in the same
    acknowledgment and timestamps (one ``now``, no input since), and ``_advertise_window``
    gives the same field again (counting a zero window each time, as it does)."""
    sndbuf = conn.sndbuf
    data_stop = end - 1 if fin else end
    payload = sndbuf.get(start, data_stop)
    flags = ACK | (FIN if fin else 0) | (PSH if payload and data_stop == sndbuf.end else 0)
    if not like.window:
        conn.stats.zero_windows_advertised += 1
    return Segment(
        conn.local_port,
        conn.remote_port,
        (conn.iss + start) & MASK,
        like.ack,
        flags,
        like.window,
        payload,
        timestamps=like.timestamps,
    )
