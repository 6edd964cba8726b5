"""The sender's loss recovery in one object: what is in flight, what is lost, how much may be
sent and when.

``LossRecovery`` owns the RTT estimator (RFC 6298), the scoreboard (RFC 6675), RACK-TLP
(RFC 8985), proportional rate reduction (RFC 9937), the undo of spurious congestion responses
(RFC 3708, RFC 3522 / RFC 4015), the pacer and the congestion controller. Only the controller
writes cwnd. The connection keeps the sequence space (SND.UNA, SND.NXT), the retransmission
timer and the segments themselves; it calls this object

- on send: ``send_budget``/``pacing_allows`` before a retransmission, ``on_retransmit``
  after; ``begin_new_data`` before the new data of an output pass, ``new_data_room`` before
  each of its segments, ``on_new_data_sent`` after; ``after_output`` once per output pass
  (arms the tail loss probe);
- on ACK: ``on_ack`` with the acknowledgment already converted to stream offsets;
- on timer: ``next_deadline`` is the earliest loss, probe or pacing deadline;
  ``probe_timer_due`` and ``on_timer`` run what is due; ``on_rto`` is the retransmission
  timer's loss response.

Like the scoreboard, it works on stream offsets only and never sees payload.
"""

from __future__ import annotations

from . import _congestion
from ._config import Config
from ._limits import SEGMENT_OVERHEAD
from ._pacing import Pacer, burst, pacing_rate
from ._rack import Rack, probe_timeout
from ._recovery import DUP_THRESH, Prr, Scoreboard, SentSegment
from ._rtt import RttEstimator
from ._seq import seq_diff
from ._stats import ConnectionStats


class LossRecovery:
    """Sender-side loss detection, recovery, pacing and congestion control of one connection."""

    __slots__ = (
        "_budget",
        "_cc_state",
        "_cwnd_limited_seq",
        "_dupacks",
        "_eifel_tsval",
        "_pacer",
        "_pacing",
        "_pass_ahead",
        "_pass_rate",
        "_prr",
        "_rack_deadline",
        "_recovery_lost",
        "_recovery_point",
        "_reno_sacked",
        "_rto_point",
        "_segments_left",
        "_tlp_deadline",
        "_tlp_due",
        "_tlp_end",
        "_tlp_retrans",
        "_tlp_start",
        "_undo",
        "_undo_ranges",
        "_undo_until",
        "cc",
        "delivery_rate",
        "rack",
        "rtt",
        "scoreboard",
        "stats",
    )

    def __init__(self, config: Config, *, mss: int, stats: ConnectionStats) -> None:
        self.stats = stats
        self._pacing = config.pacing
        self.rtt = RttEstimator(
            initial_rto=config.initial_rto, min_rto=config.min_rto, max_rto=config.max_rto
        )
        self.cc = _congestion.create(
            config.congestion_control,
            mss=mss,
            initial_window=config.initial_window,
            paced=config.pacing,
        )
        self.scoreboard = Scoreboard()
        self.rack = Rack()
        self.delivery_rate = 0.0  # bytes per second, latest sample
        self._dupacks = 0
        # Without SACK: bytes duplicate ACKs said were delivered, not yet cumulatively acked.
        self._reno_sacked = 0
        self._recovery_point: int | None = None  # RFC 6675 "RecoveryPoint" (fast recovery)
        self._rto_point: int | None = None  # RFC 6675 5.1: RecoveryPoint after an RTO
        self._recovery_lost = 0  # Scoreboard.lost_total before this recovery's losses
        self._rack_deadline: float | None = None  # RFC 8985 6.3 reordering timer
        self._tlp_deadline: float | None = None  # RFC 8985 7.2 probe timeout
        self._tlp_due = False
        self._tlp_end: int | None = None  # RFC 8985 7.3 TLP.end_seq, while a probe is out
        self._tlp_retrans = False  # the probe resent the segment starting at _tlp_start
        self._tlp_start = 0
        self._prr: Prr | None = None
        # RFC 3708: the last congestion response (an episode) can be undone while ``_undo``
        # holds the controller state before it. ``_undo_ranges`` counts, per resent data
        # range, the retransmissions of the episode not yet reported as duplicates;
        # ``_undo_until`` is SND.NXT when the episode ended (see ``_on_new_ack``).
        self._undo: object | None = None
        self._undo_ranges: dict[tuple[int, int], int] = {}
        self._undo_until: int | None = None
        self._eifel_tsval: int | None = None  # RFC 3522: TSval of the RTO retransmission
        self._pacer = Pacer()
        self._cwnd_limited_seq = 0  # cwnd was the limit when SND.NXT was here
        # The new data of one output pass (from begin_new_data on): its budget, the
        # segments the send buffer still pays for, the pacing rate, and the cwnd and
        # ssthresh they were computed from.
        self._budget = 0
        self._segments_left = 0
        self._pass_rate: float | None = None
        self._pass_ahead: float | None = None  # Pacer burst at that rate
        self._cc_state: tuple[int, int] | None = None

    @property
    def mss(self) -> int:
        """The sender's segment size: the controller's, which the connection keeps equal to
        its effective MSS."""
        return self.cc.mss

    @property
    def in_recovery(self) -> bool:
        return self._recovery_point is not None

    def switch_controller(self, name: str) -> None:
        """TCP_CONGESTION: a new algorithm takes over the current cwnd and ssthresh."""
        cc = _congestion.create(name, mss=self.cc.mss, initial_window=1, paced=self._pacing)
        cc.take_over(self.cc)
        self.cc = cc

    # ------------------------------------------------------------------ send

    def send_budget(self) -> int:
        """Bytes the congestion state lets us put in flight now."""
        if self._prr is not None and self.in_recovery:
            return self._prr.quota  # RFC 6937
        room = self.cc.cwnd - self.scoreboard.pipe
        if 0 < self._dupacks < DUP_THRESH:
            # RFC 3042 2: limited transmit: one new segment on each of the first two dupACKs.
            room += self._dupacks * self.mss
        return room

    def begin_new_data(self, send_buffer_size: int) -> None:
        """The output pass is about to send new data: take its budget and pacing rate once.
        Nothing but the pass's own sends changes them until the pass ends (no input arrives
        meanwhile), and ``on_new_data_sent`` accounts for each send, so a segment costs
        O(1) instead of recomputing both.

        The budget is ``send_budget``, but none while the segments in flight already cost
        as much bookkeeping as the send buffer holds payload (``SEGMENT_OVERHEAD`` each),
        so a peer claiming a tiny MSS cannot multiply the memory a connection holds (Linux
        charges each skb's overhead to the send buffer). Retransmissions are not held."""
        self._segments_left = max(64, send_buffer_size // SEGMENT_OVERHEAD) - len(self.scoreboard)
        self._refresh_pass()

    def _refresh_pass(self) -> None:
        cc = self.cc
        self._budget = self.send_budget()
        self._pass_rate = rate = self._pacing_rate()
        self._pass_ahead = burst(rate, cc.mss)
        self._cc_state = (cc.cwnd, cc.ssthresh)

    def new_data_room(self, now: float) -> int:
        """Bytes of new data the next segment of this pass may carry by the congestion
        state: the pass's budget (at least 0), or 0 while the pacer holds output back and
        something is in flight (else output waits for ``next_deadline``)."""
        budget = self._budget
        room = budget if budget > 0 and self._segments_left > 0 else 0
        if not self._pacer.allows_ahead(now, self._pass_ahead) and self.scoreboard.pipe > 0:
            return 0
        return room

    def output_started(self) -> None:
        """An output pass begins: it decides afresh whether pacing holds it back."""
        self._pacer.release()

    def next_retransmission(self, now: float) -> SentSegment | None:
        """The lowest segment deemed lost, if the window and the pacer let it go now
        (RFC 6675 5 NextSeg rule 1 / RFC 6298)."""
        sb = self.scoreboard
        seg = sb.next_lost()
        if seg is None or (self.send_budget() <= 0 and sb.pipe > 0):
            return None
        if not self.pacing_allows(now) and sb.pipe > 0:
            return None
        return seg

    def on_retransmit(self, seg: SentSegment, now: float) -> None:
        """``seg`` was sent again."""
        self.scoreboard.on_retransmit(seg, now)
        # Its delivery rate sample will run from this send: what was delivered until now
        # does not count (as Linux stamps every transmission, tcp_rate_skb_sent).
        seg.delivered = self.stats.bytes_acked
        n = seg.end - seg.start
        self.stats.retransmits += 1
        self.stats.bytes_retransmitted += n
        if self._undo is not None:
            key = (seg.start, seg.end - 1 if seg.fin else seg.end)
            self._undo_ranges[key] = self._undo_ranges.get(key, 0) + 1
        self._sent_bytes(n, now)

    def on_new_data_sent(self, start: int, end: int, fin: bool, now: float) -> None:
        """Offsets [start, end) left for the first time (``fin``: end - 1 is our FIN), in
        the output pass ``begin_new_data`` began."""
        sb = self.scoreboard
        sent = SentSegment(start, end, now, fin)
        sent.delivered = self.stats.bytes_acked
        sb.add(sent)
        n = end - start
        if self._prr is not None and self._recovery_point is not None:
            self._prr.on_sent(n)
        self._pacer.on_sent(n, now, self._pass_rate)
        cc = self.cc
        cc.on_sent(now=now, sent=n, in_flight=sb.pipe, snd_nxt=end)
        # send_budget() fell by n: pipe grew by n, or the PRR quota shrank by n.
        self._budget -= n
        self._segments_left -= 1
        if (cc.cwnd, cc.ssthresh) != self._cc_state:
            # A restart after idle or the end of a non-validated period (RFC 7661) moved
            # cwnd: the budget and the pacing rate follow it.
            self._refresh_pass()

    def _sent_bytes(self, n: int, now: float) -> None:
        if self._prr is not None and self.in_recovery:
            self._prr.on_sent(n)
        self._pacer.on_sent(n, now, self._pacing_rate())

    def take_probe(self) -> bool:
        """A tail loss probe is due (RFC 8985 7.3); True once per probe timeout."""
        due = self._tlp_due
        self._tlp_due = False
        return due

    def on_probe_sent(self, snd_nxt: int, *, retransmission: int | None) -> None:
        """RFC 8985 7.3: the probe left; TLP.end_seq is SND.NXT. ``retransmission``: the
        start of the segment it resent, or None if it carried new data."""
        self._tlp_retrans = retransmission is not None
        self._tlp_start = retransmission or 0
        self.stats.tlp_probes += 1
        self._tlp_end = snd_nxt

    def after_output(
        self, now: float, *, snd_nxt: int, probe_allowed: bool, rto_deadline: float | None
    ) -> None:
        """An output pass ended: arm the probe timeout and note whether cwnd was the limit.

        ``probe_allowed``: the connection may probe at all (SACK, the option on, a
        synchronized state, no RTO backoff).
        """
        self._arm_tlp(now, probe_allowed, rto_deadline)
        # RFC 7661: cwnd grows only while it is the limit. As in Linux (tcp_is_cwnd_limited,
        # max_packets_seq), it is the limit when what is in flight reaches it (half of it in
        # slow start), and stays so until that round is acknowledged, so ACKs that fall in
        # a pacing gap still count. Waiting for the pacing clock alone does not make a
        # sender cwnd-limited: cwnd, and the pacing rate with it, would grow without bound.
        cc = self.cc
        cwnd, pipe = cc.cwnd, self.scoreboard.pipe
        if pipe + cc.mss > cwnd or (2 * pipe >= cwnd and cc.in_slow_start()):
            self._cwnd_limited_seq = snd_nxt

    def _arm_tlp(self, now: float, allowed: bool, rto_deadline: float | None) -> None:
        """RFC 8985 7.2: arm the PTO with SACK, data in flight, no recovery, no probe out."""
        sb = self.scoreboard
        if not (allowed and sb.pipe > 0 and self._recovery_point is None and self._tlp_end is None):
            self._tlp_deadline = None
            return
        if self._tlp_deadline is not None:
            return
        one = len(sb) == 1
        deadline = now + probe_timeout(self.rtt.srtt, one, self.rtt.current_rto())
        if rto_deadline is not None:
            deadline = min(deadline, rto_deadline)  # RFC 8985 7.2: no later than RTO
        self._tlp_deadline = deadline

    # ------------------------------------------------------------------ pacing

    def _pacing_rate(self) -> float | None:
        """Bytes per second; None while pacing is off (Config.pacing) or before an RTT."""
        if not self._pacing:
            return None
        cc = self.cc
        return pacing_rate(
            srtt=self.rtt.srtt, cwnd=cc.cwnd, mss=self.mss, slow_start=cc.in_slow_start()
        )

    def pacing_allows(self, now: float) -> bool:
        """The pacer lets a segment go now (else output waits for ``next_deadline``)."""
        return self._pacer.allows(now, self._pacing_rate(), self.mss)

    # ------------------------------------------------------------------ ACK

    def on_ack(
        self,
        now: float,
        *,
        old_una: int,
        snd_una: int,
        snd_nxt: int,
        sack_ok: bool,
        sack_blocks: list[tuple[int, int]],
        dupack: bool,
        tsecr: int | None,
        ts_rtt: float | None,
    ) -> int:
        """One acceptable ACK: SND.UNA moved from ``old_una`` to ``snd_una`` (offsets).

        ``sack_blocks`` are the segment's SACK blocks as offsets, in the order received;
        ``dupack`` says whether RFC 5681 2 counts it as a duplicate ACK; ``tsecr`` is the
        echoed timestamp (None without timestamps) and ``ts_rtt`` the RTT it gives.
        Returns the bytes newly SACKed.
        """
        if (
            old_una == snd_una == snd_nxt
            and not sack_blocks
            and not dupack
            and self._tlp_end is None
            and self._rack_deadline is None
        ):
            # Nothing in flight and nothing reported (a receiver's data segments): no
            # delivery, no loss, no probe to judge, and RACK has nothing to time.
            return 0
        sb = self.scoreboard
        newly_sacked = 0
        sacked_before = sb.sacked_bytes
        self.rack.begin_ack()
        if sack_ok and sack_blocks:
            newly_sacked = self._apply_sack_blocks(sack_blocks, old_una, snd_una, snd_nxt, now)
        newly_lost = False
        if snd_una > old_una:
            newly_lost = self._on_new_ack(now, old_una, snd_una, snd_nxt, sack_ok, tsecr, ts_rtt)
        # RFC 9937 4-5: DeliveredData = change in SND.UNA + change in SACKed bytes; bytes
        # SACKed before and now cumulatively acknowledged leave the SACKed total, so they
        # are not counted twice.
        delivered = snd_una - old_una + sb.sacked_bytes - sacked_before
        if not sack_ok and snd_una > old_una:
            # RFC 9937 (no SACK): the segments duplicate ACKs counted as delivered are
            # covered again by the cumulative ACK; like Linux (tcp_remove_reno_sacks), it
            # delivered at least one segment, the one that filled the hole.
            advance = snd_una - old_una
            delivered = max(advance - self._reno_sacked, min(advance, self.mss))
            self._reno_sacked = max(0, self._reno_sacked - max(advance - self.mss, 0))
        if snd_una == old_una and dupack:
            # RFC 5681 2: a duplicate ACK.
            self._dupacks += 1
            if not sack_ok:
                delivered += self.mss  # RFC 9937: DeliveredData without SACK
                self._reno_sacked = min(self._reno_sacked + self.mss, snd_nxt - snd_una)
        if self._tlp_end is not None:
            self._tlp_on_ack(now, snd_una, snd_nxt)
        if sack_ok and self._rack_detect(now):
            newly_lost = True
        loss_seen = sb.lost_bytes or (not sack_ok and self._dupacks >= DUP_THRESH)
        if loss_seen and self._may_enter_recovery(snd_una, snd_nxt):
            self._enter_recovery(now, snd_una, snd_nxt, sack_ok)
        if self._prr is not None and self.in_recovery and delivered > 0:
            self._prr.on_ack(
                delivered,
                pipe=sb.pipe,
                ssthresh=self.cc.ssthresh,
                mss=self.mss,
                safe=snd_una > old_una and not newly_lost,
            )
        return newly_sacked

    def _tlp_on_ack(self, now: float, snd_una: int, snd_nxt: int) -> None:
        """RFC 8985 7.4.2: judge a probe's episode once the ACK reaches TLP.end_seq (called
        while a probe is out)."""
        end = self._tlp_end
        if end is None or snd_una < end:
            return
        if self._tlp_retrans:
            if snd_una == end:
                return  # the original or the probe arrived; wait for a D-SACK or more
            # Past TLP.end_seq with no D-SACK for the probe: it repaired a real loss, and
            # congestion control responds to it (the loss was in the probe's flight).
            if not self.in_recovery:
                self.cc.on_loss(now=now, in_flight=self._reduction_flight(snd_una, snd_nxt))
                # RFC 7661 4.4.1: R, the data lost: the segment the probe repaired.
                self.cc.on_recovery_end(now=now, lost=end - self._tlp_start)
                self.stats.tlp_recoveries += 1
        # A probe of new data, or one reported as a duplicate: no loss to answer.
        self._tlp_end = None
        self._tlp_retrans = False

    def _may_enter_recovery(self, snd_una: int, snd_nxt: int) -> bool:
        # RFC 6675 5.1 / RFC 6582 3.2 (4): after an RTO, no new recovery (and no second loss
        # response) starts until the RecoveryPoint the RTO set is acknowledged.
        return not self.in_recovery and self._rto_point is None and snd_nxt > snd_una

    def _apply_sack_blocks(
        self,
        blocks: list[tuple[int, int]],
        snd_una: int,
        ack_off: int,
        snd_nxt: int,
        now: float,
    ) -> int:
        newly = 0
        sb = self.scoreboard
        for i, (lo, hi) in enumerate(blocks):
            if (
                i == 0
                and lo < hi
                # RFC 2883 4: below this ACK's cumulative acknowledgement (which SND.UNA
                # has not taken yet), or inside the second block.
                and (
                    hi <= ack_off or (len(blocks) > 1 and blocks[1][0] <= lo and hi <= blocks[1][1])
                )
            ):
                self._on_dsack(lo, hi, snd_una, snd_nxt, now)  # RFC 2883 4: a duplicate
                continue
            # RFC 2018 / RFC 6675: ignore blocks outside (SND.UNA, SND.NXT].
            if not (snd_una <= lo < hi <= snd_nxt):
                continue
            newly += sb.apply_sack(lo, hi)
        for seg in sb.newly_sacked:
            self.rack.on_delivered(seg, now)
        sb.newly_sacked.clear()
        self.stats.sacked_bytes += newly
        return newly

    def _on_dsack(self, lo: int, hi: int, snd_una: int, snd_nxt: int, now: float) -> None:
        """RFC 2883 / RFC 3708: a segment arrived twice; if it was our retransmission, the
        retransmission was spurious. When every retransmission of the last congestion
        response proves spurious, the response is undone (RFC 3708 5 / RFC 4015 idea)."""
        self.stats.dsacks_received += 1
        self.rack.on_dsack(snd_una, snd_nxt)  # RFC 8985 6.2 step 4
        ranges = self._undo_ranges
        if self._undo is not None and ranges:
            # RFC 3708 3 / RFC 2883 5: only a D-SACK for a retransmission of this episode
            # proves something, one retransmission per D-SACK; when all of them are proven
            # duplicates, the response was spurious. A D-SACK for anything else (an
            # original the network duplicated) proves nothing.
            matched = [key for key in ranges if lo <= key[0] and key[1] <= hi]
            for key in matched:
                ranges[key] -= 1
                if not ranges[key]:
                    del ranges[key]
            self.stats.spurious_retransmits += len(matched)
            if matched and not ranges:
                self._undo_congestion_response()
        if self._tlp_end is not None and self._tlp_retrans and lo <= self._tlp_start < hi:
            self._tlp_retrans = False  # RFC 8985 7.4.2: the probe was a duplicate

    def _undo_congestion_response(self) -> None:
        assert self._undo is not None
        self.cc.undo(self._undo)
        self._forget_undo()
        self.stats.undos += 1
        if self._recovery_point is not None:
            self._recovery_point = None
            self._prr = None
            self.rack.on_recovery_exit()

    def _begin_undo(self) -> None:
        """A congestion response starts a new episode (RFC 3708): remember what to restore."""
        self._undo = self.cc.snapshot()
        self._undo_ranges.clear()
        self._undo_until = None

    def _end_undo_episode(self, snd_nxt: int) -> None:
        if self._undo is not None and self._undo_until is None:
            self._undo_until = snd_nxt

    def _forget_undo(self) -> None:
        self._undo = None
        self._undo_ranges.clear()
        self._undo_until = None

    def _rack_detect(self, now: float) -> bool:
        """RFC 8985 6.2 step 5 / 6.3: mark losses, arm the reordering timer for the rest.
        Returns whether new losses were found."""
        sb = self.scoreboard
        if not len(sb) and not sb.retransmitted:
            self._rack_deadline = None  # nothing in flight: nothing to find lost
            return False
        lost_before = sb.lost_bytes
        reo = self.rack.reo_wnd(
            in_recovery=self.in_recovery,
            sacked_segments=sb.sacked_segments,
            srtt=self.rtt.srtt or 0.0,
        )
        self._rack_deadline = self.rack.detect_losses(sb, now, reo)
        if sb.lost_bytes > lost_before:
            self.stats.lost_segments += 1
            return True
        return False

    def _on_new_ack(
        self,
        now: float,
        old_una: int,
        ack_off: int,
        snd_nxt: int,
        sack_ok: bool,
        tsecr: int | None,
        ts_rtt: float | None,
    ) -> bool:
        """SND.UNA moved to ``ack_off``. Returns whether that marked a segment lost (a
        NewReno partial ACK)."""
        sb = self.scoreboard
        acked_segments = sb.acknowledge(ack_off)
        acked = ack_off - old_una
        self._dupacks = 0
        self._tlp_deadline = None  # RFC 8985 7.2: re-armed from this ACK
        if self._eifel_tsval is not None:
            self._eifel_check(tsecr)
        # RTT (RFC 6298 (3), Karn): an ACK that covers a retransmitted segment is ambiguous,
        # whatever else it covers: its sample comes from the echoed timestamp (RFC 7323
        # 4.1, only on ACKs that advance SND.UNA), or there is none. Otherwise it times the
        # newest segment this ACK delivered; segments SACKed before were delivered then.
        rtt = ts_rtt
        newest: SentSegment | None = None
        for s in acked_segments:
            if s.retransmits:
                break
            if not s.sacked:
                newest = s
        else:
            if newest is not None:
                rtt = now - newest.xmit_time
        if rtt is not None:
            self.rtt.on_sample(rtt)
        if acked_segments:
            for s in acked_segments:
                if not s.sacked:
                    self.rack.on_delivered(s, now)
            # Delivery rate sample: bytes delivered since the newest acked segment was sent,
            # over the time since (the sampling idea of draft-cheng-iccrg-delivery-rate).
            last = acked_segments[-1]
            elapsed = now - last.xmit_time
            if elapsed > 0:
                self.delivery_rate = (self.stats.bytes_acked - last.delivered) / elapsed
        if self._undo_until is not None and ack_off > self._undo_until:
            # The episode can no longer be proven spurious: its last retransmission left
            # before the data sent after the episode ended, so (barring reordering) a
            # duplicate of it reaches the peer, and is reported, before that data is
            # acknowledged. A D-SACK from now on is about something else.
            self._forget_undo()
        if self._rto_point is not None and ack_off >= self._rto_point:
            self._rto_point = None  # RFC 6675 5.1: the timeout's recovery is over
            self._end_undo_episode(snd_nxt)
        if self.in_recovery and self._recovery_point is not None:
            if ack_off >= self._recovery_point:
                # RFC 6582 3.2 (3) / RFC 6675 5: a full ACK ends recovery.
                self._end_undo_episode(snd_nxt)
                self._recovery_point = None
                self._prr = None
                # RFC 7661 4.4.1: R is the data deemed lost during the recovery.
                lost = sb.lost_total - self._recovery_lost
                self.cc.on_recovery_end(now=now, lost=lost)
                self.rack.on_recovery_exit()
            elif not sack_ok:
                # RFC 6582 3.2 (5): a partial ACK: the next hole is lost too.
                first = sb.first()
                if first is not None:
                    return sb.mark_lost(first) > 0
        else:
            self.cc.on_ack(
                now=now,
                acked=acked,
                rtt=rtt,
                in_flight=sb.pipe + acked,
                snd_una=ack_off,
                snd_nxt=snd_nxt,
                app_limited=ack_off > self._cwnd_limited_seq,
            )
        return False

    def _eifel_check(self, tsecr: int | None) -> None:
        """RFC 3522 2 (Eifel detection): the first ACK of new data after a timeout that echoes
        a timestamp older than the retransmission's was caused by the original: the timeout
        was spurious. RFC 4015 (Eifel response): restore the congestion state and go on with
        new data instead of resending everything."""
        tsval = self._eifel_tsval
        self._eifel_tsval = None
        if tsval is None or tsecr is None:
            return
        if seq_diff(tsecr, tsval) < 0 and self._undo is not None:
            self._undo_congestion_response()
            self._rto_point = None  # no recovery to finish: the original was delivered
            self.scoreboard.unmark_lost()
            self.rack.reset_cursor()

    def _enter_recovery(self, now: float, snd_una: int, snd_nxt: int, sack_ok: bool) -> None:
        """RFC 6675 5 / RFC 6582 3.2: fast retransmit and fast recovery, with PRR."""
        sb = self.scoreboard
        # The losses that start the recovery belong to it (those marked by this ACK).
        self._recovery_lost = sb.lost_total - sb.lost_bytes
        if not sack_ok:
            first = sb.first()
            if first is not None:
                sb.mark_lost(first)
        self._recovery_point = snd_nxt
        self.stats.fast_retransmits += 1
        self._begin_undo()
        self.cc.on_loss(now=now, in_flight=self._reduction_flight(snd_una, snd_nxt))
        # RFC 9937 (PRR, which obsoletes RFC 6937): RecoverFS = pipe before the reduction.
        self._prr = Prr(sb.pipe + sb.lost_bytes)
        self._tlp_deadline = None

    def _reduction_flight(self, snd_una: int, snd_nxt: int) -> int:
        """FlightSize for a congestion response (RFC 5681 3.1 eq. 4, RFC 9438 4.6).

        RFC 5681 defines it as data sent and not cumulatively acknowledged, SACKed data
        included; this sender refills its window as SACKs arrive (RFC 6675 pipe), so that
        can exceed cwnd by what was SACKed before the loss was detected, and RFC 5681 3.2
        keeps data sent beyond cwnd that way (limited transmit) out of the computation. So:
        FlightSize, but no more than cwnd. The pipe alone would leave the SACKed data out
        and cut the window below the multiplicative decrease the RFCs prescribe.
        """
        return min(snd_nxt - snd_una, self.cc.cwnd)

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        """The earliest loss (RACK reordering), probe (TLP) or pacing deadline, or None."""
        best, tlp, pacing = self._rack_deadline, self._tlp_deadline, self._pacer.deadline()
        if tlp is not None and (best is None or tlp < best):
            best = tlp
        if pacing is not None and (best is None or pacing < best):
            best = pacing
        return best

    def probe_timer_due(self, now: float) -> bool:
        """RFC 8985 7.3: the probe timeout fired: a probe goes out with the next output (the
        connection restarts its retransmission timer)."""
        if self._tlp_deadline is None or now < self._tlp_deadline:
            return False
        self._tlp_deadline = None
        self._tlp_due = True
        return True

    def on_timer(self, now: float, *, snd_una: int, snd_nxt: int, sack_ok: bool) -> None:
        """Run the reordering and pacing timers if due (after the connection's RTO)."""
        if self._rack_deadline is not None and now >= self._rack_deadline:
            # RFC 8985 6.3: the reordering timer: look for losses again.
            self._rack_deadline = None
            self._rack_detect(now)
            if self.scoreboard.lost_bytes and self._may_enter_recovery(snd_una, snd_nxt):
                self._enter_recovery(now, snd_una, snd_nxt, sack_ok)
                if self._prr is not None:
                    self._prr.quota = self.mss
        self._pacer.release(now)  # output runs next and may send again

    def on_rto(
        self, now: float, *, snd_una: int, snd_nxt: int, repeated: bool, tsval: int | None
    ) -> None:
        """The retransmission timer expired with data outstanding (RFC 6298 (5.4)-(5.6),
        RFC 5681 3.1). ``repeated``: it had already fired for this data; ``tsval``: the
        timestamp the retransmission will carry (None without timestamps)."""
        if not repeated:
            self._begin_undo()
            self._eifel_tsval = tsval  # RFC 3522: the retransmission's TSval
        # RFC 5681 3.1: when a segment the timer already retransmitted times out again,
        # ssthresh is held constant; only cwnd goes back to one segment.
        self.cc.on_rto(
            now=now, in_flight=self._reduction_flight(snd_una, snd_nxt), repeated=repeated
        )
        self.scoreboard.mark_all_lost()
        self.rack.reset_cursor()
        # RFC 6675 5.1: "RecoveryPoint MUST be set to HighData" and fast recovery ends; RFC
        # 6582 3.2 (4) says the same of "recover" for NewReno.
        self._recovery_point = None
        self._rto_point = snd_nxt
        self._prr = None
        self._tlp_deadline = None
        self._tlp_end = None
        self._dupacks = 0
        self._reno_sacked = 0

    def stop_timers(self) -> None:
        """Nothing is left to send or probe: TIME-WAIT, or the connection is gone."""
        self._rack_deadline = None
        self._tlp_deadline = None
        self._pacer.release()
