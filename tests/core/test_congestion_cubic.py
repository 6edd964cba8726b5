"""CUBIC (RFC 9438) and HyStart++ (RFC 9406) against numbers worked out from the RFC text.

MSS is 1000 bytes throughout, so "70 MSS" is cwnd == 70_000. Constants: C = 0.4,
beta_cubic = 0.7, alpha_cubic = 3 * 0.3 / 1.7 = 0.529412 (RFC 9438 4.1.1, 4.3, 4.6).
"""

from __future__ import annotations

import math

import pytest

from utcp._congestion.base import INITIAL_SSTHRESH
from utcp._congestion.cubic import ALPHA_CUBIC, Cubic
from utcp._congestion.hystart import CSS_ROUNDS, HyStart, rtt_thresh

MSS = 1000
# RFC 9438 4.2 (Figure 2) after a loss at W_max = 100 MSS: cwnd_epoch = 70 MSS and
# K = cbrt((100 - 70) / 0.4) = cbrt(75) = 4.2171633 s.
K_100 = 4.2171633265


def cubic(**options: object) -> Cubic:
    return Cubic(mss=MSS, initial_window=10, **options)  # type: ignore[arg-type]


def ack(
    cc: Cubic,
    now: float,
    acked: int,
    *,
    rtt: float | None = 0.1,
    in_flight: int = 1 << 30,
    snd_una: int = 0,
    snd_nxt: int = 0,
    app_limited: bool = False,
) -> None:
    cc.on_ack(
        now=now,
        acked=acked,
        rtt=rtt,
        in_flight=in_flight,
        snd_una=snd_una,
        snd_nxt=snd_nxt,
        app_limited=app_limited,
    )


def after_loss_at_100(**options: object) -> Cubic:
    """Loss at cwnd = flight = 100 MSS at t = 10 s; recovery ends at t = 10.5 s."""
    cc = cubic(hystart=False, **options)
    cc.cwnd = 100 * MSS
    cc.on_loss(now=10.0, in_flight=100 * MSS)
    cc.on_recovery_end(now=10.5)
    return cc


class TestMultiplicativeDecrease:
    def test_loss_at_100_mss(self) -> None:
        cc = cubic(hystart=False)
        cc.cwnd = 100 * MSS
        cc.on_loss(now=10.0, in_flight=100 * MSS)
        # RFC 9438 4.6: ssthresh = flight_size * 0.7 = 70 MSS, cwnd = max(ssthresh, 2) = 70;
        # no earlier W_max, so W_max = cwnd = 100 (4.7) and cwnd_prior = 100.
        assert cc.ssthresh == 70 * MSS
        assert cc.cwnd == 70 * MSS
        assert cc.w_max == 100.0
        assert cc.cwnd_prior == 100.0

    def test_ssthresh_uses_flight_size_not_cwnd(self) -> None:
        cc = cubic(hystart=False)
        cc.cwnd = 100 * MSS
        cc.on_loss(now=1.0, in_flight=40 * MSS)
        # RFC 9438 4.6: 40 * 0.7 = 28 MSS; W_max still remembers cwnd = 100.
        assert (cc.ssthresh, cc.cwnd, cc.w_max) == (28 * MSS, 28 * MSS, 100.0)

    def test_floor_is_two_segments(self) -> None:
        cc = cubic(hystart=False)
        cc.on_loss(now=1.0, in_flight=2 * MSS)
        # RFC 9438 4.6: 2 * 0.7 = 1.4 MSS, raised to 2 MSS for both cwnd and ssthresh.
        assert (cc.ssthresh, cc.cwnd) == (2 * MSS, 2 * MSS)

    def test_epoch_starts_when_recovery_ends(self) -> None:
        cc = after_loss_at_100()
        # RFC 9438 4.2: t_epoch = 10.5, cwnd_epoch = 70, K = cbrt(75); 4.3: W_est = 70.
        assert cc.cwnd == 70 * MSS
        assert cc.t_epoch == 10.5
        assert cc.cwnd_epoch == 70.0
        assert cc.k == pytest.approx(K_100, abs=1e-9)
        assert cc.w_est == 70.0


class TestWindowFunction:
    def test_w_cubic_values(self) -> None:
        cc = after_loss_at_100()
        # RFC 9438 Figure 1, W_cubic(t) = 0.4 * (t - 4.2171633)^3 + 100:
        # t = 0: 0.4 * (-4.2171633)^3 + 100 = 100 - 0.4 * 75 = 70
        assert cc.w_cubic(0.0) == pytest.approx(70.0, abs=1e-9)
        # t = 1: 0.4 * (-3.2171633)^3 = 0.4 * -33.29809 = -13.31924 -> 86.68076
        assert cc.w_cubic(1.0) == pytest.approx(86.68076, abs=1e-5)
        # t = 2: 0.4 * (-2.2171633)^3 = 0.4 * -10.89916 = -4.35966 -> 95.64034
        assert cc.w_cubic(2.0) == pytest.approx(95.64034, abs=1e-5)
        # t = K: the plateau at W_max = 100
        assert cc.w_cubic(K_100) == pytest.approx(100.0, abs=1e-8)
        # t = 6: 0.4 * (1.7828367)^3 = 0.4 * 5.66676 = 2.26670 -> 102.26670 (convex)
        assert cc.w_cubic(6.0) == pytest.approx(102.26670, abs=1e-5)

    def test_concave_increment_toward_w_cubic_at_t_plus_rtt(self) -> None:
        cc = after_loss_at_100()
        # One MSS acked at t = 1.0 s with SRTT = 0.1 s (the first sample sets SRTT).
        # RFC 9438 4.3: W_est = 70 + 0.529412 * 1 / 70 = 70.00756 < W_cubic(1.0) = 86.68,
        # so not Reno-friendly. 4.2: target = W_cubic(1.1) = 0.4 * (-3.1171633)^3 + 100
        # = 100 - 0.4 * 30.28857 = 87.88457, inside [70, 105].
        # 4.4: cwnd += (87.88457 - 70) / 70 = 0.2554939 segments -> 70.2554939 MSS.
        ack(cc, 11.5, MSS)
        assert cc.w_est == pytest.approx(70.0075630, abs=1e-6)
        assert cc.cwnd == 70_255  # 70.2554939 * 1000, the fraction carried over

    def test_target_capped_at_one_and_a_half_cwnd(self) -> None:
        cc = after_loss_at_100()
        # t = 10 s: W_cubic(10.1) = 0.4 * 5.8828^3 + 100 = 181.44 > 1.5 * 70 = 105, so
        # target = 105 (RFC 9438 4.2) and each segment adds (105 - 70) / 70 = 0.5 segment:
        # two segments acked -> exactly 71 MSS.
        ack(cc, 20.5, 2 * MSS)
        assert cc.cwnd == 71 * MSS

    def test_target_floored_at_cwnd(self) -> None:
        cc = after_loss_at_100()
        cc.cwnd = 90 * MSS  # cwnd above the curve
        ack(cc, 11.5, MSS)
        # W_cubic(1.0) = 86.68 > W_est = 70.0059: not Reno-friendly. RFC 9438 4.2:
        # W_cubic(1.1) = 87.88 < cwnd = 90, so target = cwnd and cwnd does not move.
        assert cc.cwnd == 90 * MSS

    def test_reno_friendly_never_lowers_cwnd(self) -> None:
        cc = after_loss_at_100()
        cc.cwnd = 90 * MSS
        ack(cc, 10.5, MSS)
        # t = 0: W_cubic(0) = 70 < W_est = 70 + 0.529412 / 90 = 70.0059, Reno-friendly, but
        # RFC 9438 4.2 picks the larger of the two estimates, so cwnd stays at 90.
        assert cc.cwnd == 90 * MSS

    def test_reno_friendly_region_with_small_rtt(self) -> None:
        cc = after_loss_at_100()
        # A whole window (70 MSS) acked 10 ms into the stage, RTT 1 ms.
        # RFC 9438 4.3: W_est = 70 + 0.529412 * 70 / 70 = 70.529412, while
        # W_cubic(0.01) = 100 - 0.4 * 4.2071633^3 = 70.212908 < W_est: Reno-friendly, and
        # cwnd = W_est = 70.529412 MSS. (The cubic rule would have given W_cubic(0.011) =
        # 70.234.)
        ack(cc, 10.51, 70 * MSS, rtt=0.001)
        assert cc.w_est == pytest.approx(70.529412, abs=1e-6)
        assert cc.cwnd == 70_529

    def test_alpha_becomes_one_once_w_est_reaches_cwnd_prior(self) -> None:
        cc = after_loss_at_100()
        cc.w_est = 100.0  # W_est has caught up with cwnd_prior = 100
        ack(cc, 10.51, 70 * MSS, rtt=0.001)
        # RFC 9438 4.3: alpha_cubic = 1, so W_est = 100 + 1 * 70 / 70 = 101 > W_cubic(0.01),
        # and cwnd = W_est = 101 MSS.
        assert cc.w_est == pytest.approx(101.0)
        assert cc.cwnd == 101 * MSS

    def test_alpha_cubic(self) -> None:
        # RFC 9438 4.3: 3 * (1 - 0.7) / (1 + 0.7) = 0.9 / 1.7
        assert abs(ALPHA_CUBIC - 0.9 / 1.7) < 1e-12


class TestFastConvergence:
    def test_second_loss_below_w_max_lowers_w_max(self) -> None:
        cc = after_loss_at_100()
        cc.on_loss(now=12.0, in_flight=70 * MSS)
        # RFC 9438 4.7: cwnd = 70 < W_max = 100, so W_max = 70 * (1 + 0.7) / 2 = 59.5;
        # 4.6: ssthresh = cwnd = 70 * 0.7 = 49 MSS.
        assert cc.w_max == pytest.approx(59.5)
        assert (cc.cwnd, cc.ssthresh) == (49 * MSS, 49 * MSS)
        cc.on_recovery_end(now=12.5)
        # 4.2: K = cbrt((59.5 - 49) / 0.4) = cbrt(26.25) = 2.9719610 s
        assert cc.k == pytest.approx(2.9719610, abs=1e-7)

    def test_disabled(self) -> None:
        cc = after_loss_at_100(fast_convergence=False)
        cc.on_loss(now=12.0, in_flight=70 * MSS)
        cc.on_recovery_end(now=12.5)
        # RFC 9438 4.7 "otherwise": W_max = cwnd = 70, K = cbrt(21 / 0.4) = cbrt(52.5)
        assert cc.w_max == pytest.approx(70.0)
        assert cc.k == pytest.approx(3.7444362, abs=1e-7)

    def test_loss_above_w_max_remembers_cwnd(self) -> None:
        cc = after_loss_at_100()
        cc.cwnd = 110 * MSS
        cc.on_loss(now=30.0, in_flight=110 * MSS)
        assert cc.w_max == pytest.approx(110.0)


class TestTimeout:
    def test_rto_then_slow_start_then_k_zero(self) -> None:
        cc = cubic(hystart=False)
        cc.cwnd = 100 * MSS
        cc.on_rto(now=5.0, in_flight=100 * MSS)
        # RFC 9438 4.8: cwnd = 1 MSS (RFC 5681), ssthresh = 100 * 0.7 = 70 MSS.
        assert (cc.cwnd, cc.ssthresh) == (MSS, 70 * MSS)
        assert cc.w_max is None
        # Slow start (RFC 5681 3.1, byte counting) up to ssthresh.
        ack(cc, 5.1, 69 * MSS)
        assert cc.cwnd == 70 * MSS
        assert not cc.in_slow_start()
        # First avoidance ACK: K = 0 and W_max = cwnd_epoch = 70 (4.8), W_est = 70.
        ack(cc, 6.0, MSS)
        assert (cc.t_epoch, cc.k, cc.w_max, cc.cwnd_epoch) == (6.0, 0.0, 70.0, 70.0)
        # W_cubic(1.0) = 0.4 * 1 + 70 = 70.4
        assert cc.w_cubic(1.0) == pytest.approx(70.4)


class TestApplicationLimited:
    def test_no_growth_and_time_cut_out(self) -> None:
        cc = after_loss_at_100()
        ack(cc, 11.0, 10 * MSS, app_limited=True)
        # RFC 9438 5.8: no increase while application-limited.
        assert cc.cwnd == 70 * MSS
        ack(cc, 13.0, MSS)
        # RFC 9438 4.2: the 2 s spent limited are not part of t: t_epoch 10.5 -> 12.5, so
        # t = 0.5 and target = W_cubic(0.6) = 100 - 0.4 * 3.6171633^3 = 100 - 0.4 * 47.32650
        # = 81.06940; cwnd = 70 + 11.06940 / 70 = 70.158134 MSS.
        assert cc.t_epoch == pytest.approx(12.5)
        assert cc.cwnd == 70_158

    def test_idle_restart_shifts_the_epoch(self) -> None:
        cc = after_loss_at_100()
        ack(cc, 11.0, MSS)
        # Nothing else in flight when new data goes out 9 s later: on_idle(idle=9).
        cc.on_sent(now=20.0, sent=MSS, in_flight=MSS, snd_nxt=0)
        assert cc.t_epoch == pytest.approx(19.5)

    def test_sending_with_data_in_flight_is_not_a_restart(self) -> None:
        cc = after_loss_at_100()
        ack(cc, 11.0, MSS)
        cc.on_sent(now=20.0, sent=MSS, in_flight=5 * MSS, snd_nxt=0)
        assert cc.t_epoch == 10.5


class TestSpuriousUndo:
    def test_undo_restores_the_rfc_variables(self) -> None:
        cc = after_loss_at_100()
        ack(cc, 11.5, MSS)
        before = (cc.cwnd, cc.ssthresh, cc.w_max, cc.k, cc.t_epoch, cc.w_est, cc.cwnd_prior)
        saved = cc.snapshot()
        cc.on_loss(now=12.0, in_flight=70 * MSS)
        assert cc.cwnd == 49 * MSS
        # RFC 9438 4.9.2: cwnd (49) < cwnd_prior saved (70.25): restore everything.
        cc.undo(saved)
        after = (cc.cwnd, cc.ssthresh, cc.w_max, cc.k, cc.t_epoch, cc.w_est, cc.cwnd_prior)
        assert after == before
        cc.on_recovery_end(now=12.5)  # recovery was undone: nothing happens
        assert cc.cwnd == before[0]

    def test_undo_of_a_spurious_timeout(self) -> None:
        cc = after_loss_at_100()
        saved = cc.snapshot()
        cc.on_rto(now=11.0, in_flight=70 * MSS)
        assert (cc.cwnd, cc.w_max) == (MSS, None)
        cc.undo(saved)  # RFC 9438 4.9.1 / RFC 4015: back to the stage that was running
        assert (cc.cwnd, cc.ssthresh, cc.w_max, cc.t_epoch) == (70 * MSS, 70 * MSS, 100.0, 10.5)
        assert cc.k == pytest.approx(K_100, abs=1e-9)

    def test_undo_during_initial_slow_start_restores_hystart(self) -> None:
        cc = cubic()
        ack(cc, 0.1, MSS, snd_una=1001, snd_nxt=12_001)
        saved = cc.snapshot()
        cc.on_loss(now=0.2, in_flight=10 * MSS)
        assert cc.ssthresh == 7 * MSS
        cc.undo(saved)
        assert cc.ssthresh == INITIAL_SSTHRESH
        assert cc.w_max is None
        assert cc.hystart is not None and cc.hystart.window_end == 12_001


class TestHyStartUnit:
    """RFC 9406 4.2 on a bare HyStart, rounds marked by explicit offsets."""

    @staticmethod
    def one_round(hs: HyStart, *, start: int, rtts: list[float], next_end: int) -> list[int | None]:
        """ACKs of one round: the first one ends the previous round (snd_una = start)."""
        out = []
        for i, rtt in enumerate(rtts):
            out.append(hs.on_ack(acked=MSS, rtt=rtt, snd_una=start + i, snd_nxt=next_end, mss=MSS))
        return out

    def test_rtt_thresh_clamp(self) -> None:
        # RFC 9406 4.2: max(4 ms, min(lastRoundMinRTT / 8, 16 ms)).
        assert rtt_thresh(0.010) == 0.004  # 1.25 ms -> 4 ms
        assert rtt_thresh(0.064) == 0.008
        assert rtt_thresh(0.100) == 0.0125
        assert rtt_thresh(0.200) == 0.016  # 25 ms -> 16 ms

    def test_unpaced_default_l_is_eight(self) -> None:
        hs = cubic().hystart
        assert hs is not None and hs.limit == 8  # RFC 9406 4.3, utcp does not pace

    def test_growth_capped_at_l_segments(self) -> None:
        hs = HyStart(limit=8)
        # RFC 9406 4.2 / 4.3: cwnd += min(N, L * SMSS) with L = 8 unpaced.
        assert hs.on_ack(acked=20 * MSS, rtt=0.1, snd_una=1, snd_nxt=100, mss=MSS) == 8 * MSS
        assert HyStart(limit=None).on_ack(
            acked=20 * MSS, rtt=0.1, snd_una=1, snd_nxt=100, mss=MSS
        ) == (20 * MSS)

    def test_exit_to_css_needs_eight_samples_and_the_threshold(self) -> None:
        hs = HyStart()
        self.one_round(hs, start=0, rtts=[0.100] * 8, next_end=100)
        assert hs.last_round_min_rtt == math.inf and not hs.in_css
        # Round 2: lastRoundMinRTT = 100 ms, RttThresh = 12.5 ms, exit at >= 112.5 ms.
        out = self.one_round(hs, start=100, rtts=[0.1125] * 7, next_end=200)
        assert hs.last_round_min_rtt == 0.100
        assert not hs.in_css  # only 7 samples (N_RTT_SAMPLE = 8)
        assert out == [MSS] * 7
        hs.on_ack(acked=MSS, rtt=0.1125, snd_una=107, snd_nxt=200, mss=MSS)
        assert hs.in_css
        assert hs.css_baseline_min_rtt == 0.1125
        # RFC 9406 4.2: in CSS the increase is min(N, L*SMSS) / CSS_GROWTH_DIVISOR.
        assert hs.on_ack(acked=MSS, rtt=0.1125, snd_una=108, snd_nxt=200, mss=MSS) == 250
        assert hs.on_ack(acked=20 * MSS, rtt=0.12, snd_una=109, snd_nxt=200, mss=MSS) == 2000

    def test_just_below_threshold_stays_in_slow_start(self) -> None:
        hs = HyStart()
        self.one_round(hs, start=0, rtts=[0.100] * 8, next_end=100)
        self.one_round(hs, start=100, rtts=[0.1124] * 20, next_end=200)
        assert not hs.in_css

    def test_round_min_not_round_max_decides(self) -> None:
        hs = HyStart()
        self.one_round(hs, start=0, rtts=[0.100] * 8, next_end=100)
        # One low sample among high ones keeps the round's minimum below the threshold.
        self.one_round(hs, start=100, rtts=[0.2] * 7 + [0.101], next_end=200)
        assert not hs.in_css

    def test_rtt_drop_in_css_resumes_slow_start(self) -> None:
        hs = HyStart()
        self.one_round(hs, start=0, rtts=[0.100] * 8, next_end=100)
        self.one_round(hs, start=100, rtts=[0.115] * 8, next_end=200)
        assert hs.in_css and hs.css_baseline_min_rtt == 0.115
        # Next round: 8 samples, minimum 0.105 < baseline 0.115: the exit was spurious.
        out = self.one_round(hs, start=200, rtts=[0.105] * 8, next_end=300)
        assert not hs.in_css
        assert out[:7] == [250] * 7  # CSS growth until the eighth sample
        assert hs.on_ack(acked=MSS, rtt=0.105, snd_una=208, snd_nxt=300, mss=MSS) == MSS

    def test_css_rounds_then_congestion_avoidance(self) -> None:
        hs = HyStart()
        self.one_round(hs, start=0, rtts=[0.100] * 8, next_end=100)
        self.one_round(hs, start=100, rtts=[0.115] * 8, next_end=200)
        assert hs.in_css
        # The round CSS began in ends at 200 (css round 1), then 300, 400, 500 ...
        for n in range(2, CSS_ROUNDS + 1):
            out = self.one_round(hs, start=n * 100, rtts=[0.120] * 8, next_end=(n + 1) * 100)
            assert hs.css_rounds == n - 1 and out[0] == 250
        # ... and the end of the fifth CSS round (at 600) enters congestion avoidance.
        assert hs.on_ack(acked=MSS, rtt=0.12, snd_una=600, snd_nxt=700, mss=MSS) is None


class TestHyStartInCubic:
    def test_initial_slow_start_uses_hystart_and_its_exit_sets_k_zero(self) -> None:
        cc = cubic()
        cc.on_sent(now=0.0, sent=MSS, in_flight=MSS, snd_nxt=1001)
        assert cc.hystart is not None and cc.hystart.window_end == 1
        una, now = 1, 0.0

        hs = cc.hystart

        def round_(rtt: float, n: int = 8) -> None:
            """n ACKs of one MSS; the first acknowledges windowEnd and so starts a round."""
            nonlocal una, now
            assert hs.window_end is not None
            una = max(una, hs.window_end)
            nxt = una + cc.cwnd + n * MSS
            for _ in range(n):
                now += 0.01
                ack(cc, now, MSS, rtt=rtt, snd_una=una, snd_nxt=nxt)
                una += MSS

        round_(0.100)  # round 1: cwnd 10 -> 18 MSS (+1 MSS per MSS acked)
        assert cc.cwnd == 18 * MSS
        round_(0.100)  # round 2: lastRoundMinRTT = 100 ms, 18 -> 26 MSS
        round_(0.120)  # round 3: +20 ms >= 12.5 ms, CSS from the eighth sample; 34 MSS
        assert hs.in_css and cc.cwnd == 34 * MSS
        for _ in range(CSS_ROUNDS - 1):  # CSS rounds 1-4 end; each next ACK adds 250 bytes
            round_(0.120, n=1)
        assert cc.cwnd == 35 * MSS
        una = max(una, hs.window_end or 0)  # the fifth CSS round ends
        ack(cc, now + 0.01, MSS, rtt=0.12, snd_una=una, snd_nxt=una + 50 * MSS)
        # RFC 9406 4.2: ssthresh = cwnd; RFC 9438 4.10: cwnd_prior = cwnd, W_max undefined.
        exit_cwnd = cc.cwnd
        assert cc.ssthresh == exit_cwnd
        assert cc.cwnd_prior == exit_cwnd / MSS
        assert cc.w_max is None
        assert exit_cwnd == 35 * MSS
        # The first avoidance ACK: K = 0, W_max = 35; W_est = 35 >= cwnd_prior = 35 so
        # alpha = 1 (RFC 9438 4.3): W_est = 35 + 1 / 35 = 35.028571 > W_cubic(0) = 35.
        ack(cc, now + 1.0, MSS, rtt=0.12, snd_una=una + MSS, snd_nxt=una + 50 * MSS)
        assert cc.k == 0.0 and cc.w_max == 35.0
        assert cc.w_est == pytest.approx(35 + 1 / 35)
        assert cc.cwnd == 35_028

    def test_no_hystart_after_a_timeout(self) -> None:
        cc = cubic()
        cc.cwnd = 40 * MSS
        cc.on_rto(now=1.0, in_flight=40 * MSS)  # ssthresh = 28 MSS
        ack(cc, 1.5, 20 * MSS, snd_una=20_001, snd_nxt=30_001)
        # RFC 9406 4.2: HyStart++ only in the initial slow start; after an RTO plain byte
        # counting: 1 + 20 = 21 MSS (no L = 8 cap).
        assert cc.cwnd == 21 * MSS

    def test_without_offsets_plain_slow_start(self) -> None:
        cc = cubic()
        ack(cc, 0.5, 20 * MSS)
        assert cc.cwnd == 30 * MSS
