"""RACK-TLP loss detection (RFC 8985), on the scoreboard's segments and times only.

RACK deems a segment lost once a segment sent after it has been delivered and more than
``RACK.rtt + RACK.reo_wnd`` has passed since it was sent. Original transmissions are sent
in offset order, so they are walked with a forward-only cursor; retransmissions are walked
in the order they were sent (``Scoreboard.retransmitted``). Each ACK therefore costs time in
proportion to the segments it resolves, not to the segments in flight.

The tail loss probe (RFC 8985 7) lives here too: when to send it and what it proves.
"""

from __future__ import annotations

import math

from ._recovery import DUP_THRESH, Scoreboard, SentSegment

# RFC 8985 7.2: the worst-case delayed-ACK time added to the PTO when one segment is out.
WC_DEL_ACK_T = 0.200
# RFC 8985 6.2 step 4: reo_wnd_mult grows on D-SACK; reset after this many recoveries.
REO_WND_PERSIST = 16


class Rack:
    """The RACK state of one sender (RFC 8985 6.1 names)."""

    __slots__ = (
        "_cursor",
        "dsack_round",
        "end",
        "fack",
        "fack_before_ack",
        "min_rtt",
        "reo_wnd_mult",
        "reo_wnd_persist",
        "reordering_seen",
        "rtt",
        "xmit_ts",
    )

    def __init__(self) -> None:
        self.xmit_ts = -math.inf  # RACK.xmit_ts: send time of the newest delivered segment
        self.end = 0  # RACK.end_seq (as a stream offset)
        self.rtt = 0.0  # RACK.rtt: the RTT of that delivery
        self.min_rtt = math.inf
        self.fack = 0  # RACK.fack: highest offset delivered (acked or SACKed)
        self.fack_before_ack = 0  # RACK.fack as it was before the ACK being processed
        self.reordering_seen = False
        self.reo_wnd_mult = 1
        self.reo_wnd_persist = REO_WND_PERSIST
        self.dsack_round: int | None = None
        self._cursor = 0  # originals below this offset are resolved (delivered/lost/resent)

    def begin_ack(self) -> None:
        """Called once per arriving ACK, before its segments are passed to on_delivered."""
        self.fack_before_ack = self.fack

    # RFC 8985 6.2 step 2 and 3: called for every segment newly acknowledged or SACKed.
    def on_delivered(self, seg: SentSegment, now: float) -> None:
        rtt = now - seg.xmit_time
        # A retransmitted segment acknowledged sooner than min_RTT after its resend was
        # likely acknowledged for its original transmission: no trustworthy sample.
        if not (seg.retransmits and rtt < self.min_rtt):
            self.min_rtt = min(self.min_rtt, rtt)
            if seg.xmit_time > self.xmit_ts or (
                seg.xmit_time == self.xmit_ts and seg.end > self.end
            ):
                self.xmit_ts = seg.xmit_time
                self.end = seg.end
                self.rtt = rtt
        # Step 3: a never-retransmitted segment delivered below the highest offset delivered
        # by an earlier ACK arrived out of order. Segments delivered by the same ACK are not
        # compared with each other: an ACK that both acknowledges a delayed-ACK segment and
        # SACKs data above a fresh hole is ordinary loss, not reordering.
        if seg.end < self.fack_before_ack and not seg.retransmits:
            self.reordering_seen = True
        self.fack = max(self.fack, seg.end)

    # RFC 8985 6.2 step 4, on D-SACK: widen the reordering window, once per round trip.
    def on_dsack(self, snd_una: int, snd_nxt: int) -> None:
        if self.dsack_round is not None and snd_una < self.dsack_round:
            return
        self.dsack_round = snd_nxt
        self.reo_wnd_mult += 1
        self.reo_wnd_persist = REO_WND_PERSIST

    def on_recovery_exit(self) -> None:
        # RFC 8985 6.2 step 4: after REO_WND_PERSIST recoveries without D-SACK, reset.
        self.reo_wnd_persist -= 1
        if self.reo_wnd_persist <= 0:
            self.reo_wnd_mult = 1
            self.reo_wnd_persist = REO_WND_PERSIST

    def reo_wnd(self, *, in_recovery: bool, sacked_segments: int, srtt: float) -> float:
        """RFC 8985 6.2 step 4."""
        if not self.reordering_seen and (in_recovery or sacked_segments >= DUP_THRESH):
            return 0.0
        if self.min_rtt == math.inf:
            return 0.0
        return min(self.reo_wnd_mult * self.min_rtt / 4, srtt)

    def detect_losses(self, sb: Scoreboard, now: float, reo_wnd: float) -> float | None:
        """RFC 8985 6.2 step 5: mark what is lost; return when to look again (the RACK
        reordering timer, 6.3) or None."""
        if self.xmit_ts == -math.inf:
            return None
        deadline: float | None = None
        # Originals, in offset (= send time) order.
        for seg in sb.segments_from(self._cursor):
            if not (seg.acked or seg.sacked or seg.lost or seg.retransmits):
                deadline = self._judge(sb, seg, now, reo_wnd)
                if deadline is not None or not seg.lost:
                    break
            self._cursor = seg.end
        # Retransmissions, in the order they were sent.
        queue = sb.retransmitted
        while queue:
            seg, when = queue[0]
            if not (seg.acked or seg.sacked or seg.lost or seg.xmit_time != when):
                at = self._judge(sb, seg, now, reo_wnd)
                if at is not None:
                    deadline = at if deadline is None else min(deadline, at)
                if not seg.lost:
                    break
            queue.popleft()
        return deadline

    def _judge(self, sb: Scoreboard, seg: SentSegment, now: float, reo_wnd: float) -> float | None:
        """Mark ``seg`` lost if its time is up; else the time it will be (None if RACK cannot
        judge it yet: it was sent after the newest delivered segment)."""
        if not _sent_before(seg, self.xmit_ts, self.end):
            return None
        remaining = seg.xmit_time + self.rtt + reo_wnd - now
        if remaining <= 0:
            sb.mark_lost(seg)
            return None
        return now + remaining

    def reset_cursor(self) -> None:
        """After an RTO marks everything lost, the originals are walked from the start."""
        self._cursor = 0


def _sent_before(seg: SentSegment, xmit_ts: float, end: int) -> bool:
    # RFC 8985 6.2 step 5: RACK_sent_after(RACK.xmit_ts, RACK.end_seq, seg.xmit_ts, seg.end).
    return seg.xmit_time < xmit_ts or (seg.xmit_time == xmit_ts and seg.end < end)


def probe_timeout(srtt: float | None, one_segment_out: bool, rto: float) -> float:
    """RFC 8985 7.2: PTO = 2 * SRTT (+ WCDelAckT with one segment out), at most the RTO."""
    if srtt is None:
        return min(1.0, rto)  # RFC 8985 7.2: no SRTT yet: 1 s
    pto = 2 * srtt
    if one_segment_out:
        pto += WC_DEL_ACK_T
    return min(pto, rto)
