"""RACK (RFC 8985) and PRR (RFC 6937) on synthetic ACK sequences, values worked by hand."""

from __future__ import annotations

import pytest

from utcp._rack import WC_DEL_ACK_T, Rack, probe_timeout
from utcp._recovery import Prr, Scoreboard, SentSegment

MSS = 1000


def board(n: int, spacing: float = 0.001) -> tuple[Scoreboard, list[SentSegment]]:
    """n one-MSS segments sent ``spacing`` apart from t=0 (offsets start at 1)."""
    sb = Scoreboard()
    segs = []
    for i in range(n):
        seg = SentSegment(1 + i * MSS, 1 + (i + 1) * MSS, i * spacing, False)
        sb.add(seg)
        segs.append(seg)
    return sb, segs


def sack(sb: Scoreboard, rack: Rack, seg: SentSegment, now: float) -> None:
    """One ACK that SACKs ``seg``."""
    rack.begin_ack()
    assert sb.apply_sack(seg.start, seg.end) == MSS
    for s in sb.newly_sacked:
        rack.on_delivered(s, now)
    sb.newly_sacked.clear()


class TestRackLossDetection:
    def test_segment_lost_once_rtt_plus_reo_wnd_passed_since_it_was_sent(self) -> None:
        # Segment 5 (sent at 5 ms) is SACKed at 50 ms: RACK.xmit_ts = 5 ms, RACK.rtt = 45 ms.
        sb, segs = board(10)
        rack = Rack()
        sack(sb, rack, segs[5], 0.050)
        assert rack.xmit_ts == 0.005 and rack.rtt == pytest.approx(0.045)
        # RFC 8985 6.2 step 5: seg is lost when seg.xmit_ts + RACK.rtt + reo_wnd <= now.
        # With reo_wnd = 10 ms, segment 0 (sent at 0) is lost at 55 ms: not yet at 50 ms;
        # the reordering timer is armed for then (6.3).
        assert rack.detect_losses(sb, 0.050, 0.010) == pytest.approx(0.055)
        assert sb.lost_bytes == 0
        # At 56.5 ms segments 0 (due 55 ms) and 1 (due 56 ms) are lost; 2 is due at 57 ms.
        assert rack.detect_losses(sb, 0.0565, 0.010) == pytest.approx(0.057)
        assert [s.lost for s in segs[:5]] == [True, True, False, False, False]
        assert sb.lost_bytes == 2 * MSS
        # Segments sent after RACK.xmit_ts (6..9) are never judged by it.
        assert rack.detect_losses(sb, 1.0, 0.010) is None
        assert [s.lost for s in segs] == [True] * 5 + [False] * 5
        assert sb.next_lost() is segs[0]

    def test_lost_retransmission_is_detected_by_time_too(self) -> None:
        # Segment 0 is retransmitted at 60 ms; segment 9, sent at 9 ms... and a new segment
        # sent at 70 ms is SACKed at 115 ms (RACK.rtt 45 ms): the retransmission, sent
        # before it, is lost at 60 + 45 + 0 ms.
        sb, segs = board(3)
        rack = Rack()
        sack(sb, rack, segs[1], 0.046)
        rack.detect_losses(sb, 0.046, 0.0)
        assert segs[0].lost
        sb.on_retransmit(segs[0], 0.060)
        new = SentSegment(segs[2].end, segs[2].end + MSS, 0.070, False)
        sb.add(new)
        sack(sb, rack, new, 0.115)
        assert rack.detect_losses(sb, 0.115, 0.0) is None
        assert segs[0].lost and segs[0].retransmits == 1  # lost again: to be resent
        assert segs[2].lost  # sent at 2 ms, long overdue

    def test_reordering_window(self) -> None:
        rack = Rack()
        rack.min_rtt = 0.040
        # RFC 8985 6.2 step 4: no reordering seen and DupThresh SACKed segments (or in
        # recovery): reo_wnd = 0; otherwise min(reo_wnd_mult * min_RTT / 4, SRTT).
        assert rack.reo_wnd(in_recovery=False, sacked_segments=3, srtt=0.05) == 0.0
        assert rack.reo_wnd(in_recovery=True, sacked_segments=0, srtt=0.05) == 0.0
        assert rack.reo_wnd(in_recovery=False, sacked_segments=2, srtt=0.05) == 0.010
        rack.reordering_seen = True
        assert rack.reo_wnd(in_recovery=True, sacked_segments=9, srtt=0.05) == 0.010
        # D-SACK: the multiplier grows once per round, capped by SRTT.
        rack.on_dsack(snd_una=100, snd_nxt=5000)
        rack.on_dsack(snd_una=200, snd_nxt=6000)  # same round: ignored
        assert rack.reo_wnd_mult == 2
        assert rack.reo_wnd(in_recovery=False, sacked_segments=0, srtt=0.05) == 0.020
        rack.on_dsack(snd_una=5000, snd_nxt=9000)
        rack.on_dsack(snd_una=9000, snd_nxt=9500)
        rack.on_dsack(snd_una=9500, snd_nxt=9900)
        assert rack.reo_wnd(in_recovery=False, sacked_segments=0, srtt=0.03) == 0.03

    def test_reordering_detected_from_a_late_original(self) -> None:
        sb, segs = board(4)
        rack = Rack()
        sack(sb, rack, segs[3], 0.05)
        assert not rack.reordering_seen
        sack(sb, rack, segs[1], 0.051)  # never retransmitted, below RACK.fack
        assert rack.reordering_seen

    def test_one_ack_for_a_held_segment_and_data_above_a_hole_is_not_reordering(self) -> None:
        # The receiver held segment 0 for its delayed ACK; segment 1 is lost; segment 2
        # arrives and draws an immediate ACK: cumulative ACK of 0, SACK of 2. The connection
        # hands RACK the SACKed segment first, then the cumulatively acknowledged one. Both
        # were delivered by the same ACK, so 0 ending below 2 says nothing about reordering
        # (RFC 8985 6.2 step 3 compares with what earlier ACKs delivered).
        sb, segs = board(4)
        rack = Rack()
        rack.begin_ack()
        assert sb.apply_sack(segs[2].start, segs[2].end) == MSS
        for s in sb.newly_sacked:
            rack.on_delivered(s, 0.05)
        sb.newly_sacked.clear()
        for s in sb.acknowledge(segs[0].end):
            rack.on_delivered(s, 0.05)
        assert rack.fack == segs[2].end
        assert not rack.reordering_seen
        # With no reordering seen and fewer than DupThresh segments SACKed, reo_wnd is
        # min_RTT / 4; once in recovery it is 0 (RFC 8985 6.2 step 4).
        assert rack.reo_wnd(in_recovery=False, sacked_segments=1, srtt=0.05) > 0
        assert rack.reo_wnd(in_recovery=True, sacked_segments=1, srtt=0.05) == 0.0
        # A later ACK that delivers the never-retransmitted segment 1 is reordering.
        sack(sb, rack, segs[1], 0.06)
        assert rack.reordering_seen


class TestTailLossProbe:
    def test_probe_timeout(self) -> None:
        # RFC 8985 7.2: PTO = 2 * SRTT, plus WCDelAckT with one segment in flight, at most
        # the RTO; 1 s before any RTT sample.
        assert probe_timeout(0.05, False, 1.0) == pytest.approx(0.10)
        assert probe_timeout(0.05, True, 1.0) == pytest.approx(0.10 + WC_DEL_ACK_T)
        assert probe_timeout(0.2, True, 0.45) == pytest.approx(0.45)
        assert probe_timeout(None, False, 3.0) == 1.0


class TestPrr:
    def test_proportional_part_sends_one_segment_per_two_acks(self) -> None:
        # RFC 6937 3: RecoverFS = 20 segments, ssthresh = 10 (a Reno halving), one MSS
        # delivered per ACK while pipe > ssthresh:
        # sndcnt = CEIL(prr_delivered * ssthresh / RecoverFS) - prr_out.
        prr = Prr(20 * MSS)
        sent_on = []
        pipe = 19 * MSS
        for ack in range(1, 11):
            prr.on_ack(MSS, pipe=pipe, ssthresh=10 * MSS, mss=MSS, safe=True)
            if prr.quota > 0:
                prr.on_sent(MSS)
                sent_on.append(ack)
            else:
                pipe -= MSS
        # ACK 1: CEIL(1000 * 10/20) - 0 = 500 > 0: send; ACK 2: 1000 - 1000 = 0: hold;
        # ACK 3: 1500 - 1000 = 500: send; ... one segment per two ACKs.
        assert sent_on == [1, 3, 5, 7, 9]
        assert prr.out == 5 * MSS and prr.delivered == 10 * MSS

    def test_slow_start_reduction_bound_when_pipe_falls_below_ssthresh(self) -> None:
        # RFC 9937 4, on a safe ACK (SND.UNA advances, no further loss), PRR-SSRB:
        # limit = MAX(prr_delivered - prr_out, DeliveredData) + MSS;
        # sndcnt = MIN(ssthresh - pipe, limit).
        prr = Prr(20 * MSS)
        prr.delivered, prr.out = 10 * MSS, 6 * MSS
        # Many losses: pipe 4 MSS below ssthresh 10; this ACK delivers 2 MSS.
        prr.on_ack(2 * MSS, pipe=4 * MSS, ssthresh=10 * MSS, mss=MSS, safe=True)
        # prr_delivered 12: limit = max(12 - 6, 2) + 1 = 7 MSS; ssthresh - pipe = 6 MSS.
        assert prr.quota == 6 * MSS
        prr.on_ack(1 * MSS, pipe=9 * MSS, ssthresh=10 * MSS, mss=MSS, safe=True)
        assert prr.quota == 1 * MSS  # ssthresh - pipe

    def test_conservative_reduction_bound_on_other_acks(self) -> None:
        # RFC 9937 4, PRR-CRB on an ACK that is not safe (SND.UNA does not advance, or
        # further loss is indicated): limit = MAX(prr_delivered - prr_out, DeliveredData).
        prr = Prr(20 * MSS)
        prr.delivered, prr.out = 10 * MSS, 9 * MSS
        prr.on_ack(2 * MSS, pipe=4 * MSS, ssthresh=10 * MSS, mss=MSS, safe=False)
        assert prr.quota == 3 * MSS  # max(12 - 9, 2); SSRB would allow 4
        prr.on_ack(2 * MSS, pipe=4 * MSS, ssthresh=10 * MSS, mss=MSS, safe=True)
        assert prr.quota == 6 * MSS  # min(10 - 4, max(14 - 9, 2) + 1)

    def test_the_fast_retransmit_always_goes_out(self) -> None:
        # Even when the first ACK of recovery yields no quota (RFC 6937 3): here pipe is
        # already at ssthresh, so SSRB gives MIN(ssthresh - pipe, ...) = 0.
        prr = Prr(100 * MSS)
        prr.on_ack(MSS, pipe=10 * MSS, ssthresh=10 * MSS, mss=MSS, safe=False)
        assert prr.quota == MSS
        prr.on_sent(MSS)
        prr.on_ack(MSS, pipe=10 * MSS, ssthresh=10 * MSS, mss=MSS, safe=False)
        assert prr.quota == 0  # only the first
