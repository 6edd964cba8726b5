"""Header prediction: the short path for the two segments a bulk transfer is made of.

RFC 9293 3.10.7.4 processes a segment in eight steps (sequence check, RST, SYN, ACK, URG,
text, FIN), each a handful of tests that almost never fire on an established connection.
Van Jacobson's header prediction (RFC 1323's appendix "header prediction", Linux's
``tcp_rcv_established`` fast path) notices that nearly every segment is one of two kinds
and takes a short path for them:

- a pure ACK (the sender's side of a bulk transfer): no data, in sequence, acknowledging
  new data;
- in-order data (the receiver's side): exactly at RCV.NXT, inside the window, acknowledging
  nothing new (or, in ESTABLISHED, new data: the request of a request-response exchange
  acknowledges the last reply).

Both are taken only for a segment with no flag but ACK (and PSH), no SACK blocks and a
timestamp that passes PAWS when timestamps are in use (RFC 7323 5.3). Unlike Linux's, the
prediction holds when the peer's window changes (in request-response traffic it changes
with every request): the full path's window update runs on it. Data is predicted in
ESTABLISHED and the FIN-WAIT states (a client that sent its request and its FIN still
receives), pure ACKs in ESTABLISHED and CLOSE-WAIT. Everything else (out-of-order data,
SACK, SYN, FIN, RST, URG, a duplicate ACK, a failing timestamp, data while an owed ACK is
being split off) takes the full path in ``Connection``.

The short path makes exactly the state changes the full path makes for such a segment, by
calling the same helpers in the same order and skipping only tests whose outcome the
conditions decide in advance; ``tests/core/test_fastpath.py`` runs transfers over a lossy
simulated network with ``ENABLED`` on and off and compares every segment on the wire.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._events import DataReceived
from ._seq import MASK, seq_diff
from ._state import State
from ._wire import ACK, PSH, Segment

if TYPE_CHECKING:
    from ._connection import Connection

ENABLED = True
"""Module switch for the short paths, this one and ``Connection._output_data``'s (tests turn
it off to compare them with the full ones)."""

# Where each kind is predicted: data where the peer's text is still accepted (RFC 9293
# 3.10.7.4 seventh); pure ACKs where no FIN of ours is in flight, so an ACK changes no state.
_DATA_STATES = frozenset((State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2))
_ACK_STATES = frozenset((State.ESTABLISHED, State.CLOSE_WAIT))


def receive_fast(conn: Connection, seg: Segment, now: float) -> bool:
    """Process ``seg`` on the short path if it is a predicted segment; False (and nothing
    changed) if it is not. May create output (a delayed or immediate ACK, as the full path)."""
    if seg.flags & ~PSH != ACK or seg.sack_blocks or conn._ack_split:
        return False
    payload = seg.payload
    if conn.state not in (_DATA_STATES if payload else _ACK_STATES):
        return False
    rb = conn.rcvbuf
    # RFC 9293 3.10.7.4 first: in sequence exactly at RCV.NXT (offsets, no wrap-around).
    if seg.seq != (conn.irs + rb.nxt + conn._fin_received) & MASK:
        return False
    ts = seg.timestamps
    if conn.ts_ok and (ts is None or seq_diff(ts[0], conn.ts_recent) < 0):
        return False  # RFC 7323 5.3: no timestamp, or PAWS would reject it
    una = conn._snd_una
    ack_off = una + seq_diff(seg.ack, (conn.iss + una) & MASK)
    if payload:
        # In-order data wholly inside the window, no hole, no FIN of the peer waiting above
        # it (RFC 9293 3.10.7.4 eighth), the application still reading (RFC 1122
        # 4.2.2.13); acknowledging nothing new, or (in ESTABLISHED, where no FIN of ours
        # can be acknowledged) new data: a request that acknowledges the last reply.
        size = len(payload)
        if (
            rb.nxt + size > conn._rcv_adv
            or rb.has_gap
            or rb.fin_offset is not None
            or conn.orphaned
        ):
            return False
        if ack_off == una:
            _ack_accepted(conn, seg, now)
            # RFC 9293 3.10.7.4 fifth: nothing acknowledged; the recovery still sees the
            # ACK (RACK and the probe logic run on every one). The echoed timestamp only
            # matters to an ACK of new data; with no SACK blocks nothing is newly SACKed,
            # so the persist backoff stays. Our FIN, if sent, is not acked by it.
            conn.recovery.on_ack(
                now,
                old_una=una,
                snd_una=una,
                snd_nxt=conn._snd_nxt,
                sack_ok=conn.sack_ok,
                sack_blocks=[],
                dupack=False,  # RFC 5681 2: it carries data
                tsecr=None,
                ts_rtt=None,
            )
            # RFC 9293 3.10.7.4 fifth: the window update, as _process_ack ends.
            window_before = conn.snd_wnd
            conn._update_window(seg)
            if conn.snd_wnd > window_before:
                conn._persist_backoff = 0
        elif conn.state is State.ESTABLISHED and una < ack_off <= conn._snd_nxt:
            _ack_accepted(conn, seg, now)
            conn._process_ack(seg, ack_off, now)
        else:
            return False
        # RFC 9293 3.10.7.4 seventh: the text goes to the receive buffer.
        conn._note_data_arrival(now)
        moved = rb.insert(rb.nxt, payload, conn._rcv_adv)
        conn.stats.bytes_received += moved
        if moved:
            conn._notify(DataReceived)
        conn._schedule_delayed_ack(now, size >= conn.effective_mss)
        return True
    # A pure ACK of new data: SND.UNA < SEG.ACK =< SND.NXT. No FIN of ours is in flight in
    # these states, so it cannot change the state; the peer's FIN, if any, is handled.
    if not una < ack_off <= conn._snd_nxt:
        return False
    _ack_accepted(conn, seg, now)
    conn._process_ack(seg, ack_off, now)
    return True


def _ack_accepted(conn: Connection, seg: Segment, now: float) -> None:
    """``Connection._ack_accepted`` for a predicted segment, whose tests are decided: it
    sits at RCV.NXT (as an offset, RCV.NXT counts the peer's FIN) and its TSval passed
    PAWS, so RFC 7323 4.3's TS.Recent update depends on Last.ACK.sent alone."""
    ts = seg.timestamps
    if (
        ts is not None
        and conn.ts_ok
        and conn.rcvbuf.nxt + conn._fin_received <= conn._last_ack_sent
    ):
        conn.ts_recent = ts[0]
        conn._ts_recent_time = now
    conn._last_recv_time = now
    conn._keepalive_probes = 0
    conn._probes_out = 0
    conn._probes_since = None
