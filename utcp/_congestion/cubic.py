"""CUBIC congestion control (RFC 9438) with HyStart++ (RFC 9406) for the initial slow start.

Windows are kept in segments inside the formulas, as RFC 9438 4.1 writes them, and in
bytes in ``cwnd``/``ssthresh``. Theory of operation:

- Slow start: HyStart++ while ssthresh still has its initial value (RFC 9406 4.2), byte
  counting slow start otherwise (after a timeout).
- Congestion avoidance: a stage starts at the end of fast recovery, or lazily at the first
  ACK in avoidance (after slow start). At its start ``t_epoch``, ``cwnd_epoch``, ``K`` and
  ``W_est`` are set; ``W_max`` and ``cwnd_prior`` come from the last congestion event (after a
  timeout or a HyStart++ exit ``W_max`` is undefined, and the stage uses K = 0 and
  W_max = cwnd_epoch). Each ACK moves cwnd toward W_cubic(t + RTT), or to ``W_est`` where
  Reno would be faster (the Reno-friendly region).
- Time the sender spends application-limited or idle is cut out of ``t`` by moving
  ``t_epoch`` later (RFC 9438 5.8), so the curve resumes where it stopped.
"""

from __future__ import annotations

import math
from typing import ClassVar

from .base import INITIAL_SSTHRESH, AckSample, CongestionController
from .hystart import NON_PACED_L, HyStart

# RFC 9438 5.1: C SHOULD be 0.4 (segments / second^3).
C = 0.4
# RFC 9438 4.6: beta_cubic SHOULD be 0.7.
BETA_CUBIC = 0.7
# RFC 9438 4.3: alpha_cubic = 3 * (1 - beta_cubic) / (1 + beta_cubic), Reno's average window.
ALPHA_CUBIC = 3 * (1 - BETA_CUBIC) / (1 + BETA_CUBIC)


def _cbrt(x: float) -> float:
    return math.copysign(abs(x) ** (1 / 3), x)


class Cubic(CongestionController):
    name: ClassVar[str] = "cubic"
    # RFC 9438 4.9.2: the variables saved before a reduction and restored on a spurious one.
    _undo_state: ClassVar[tuple[str, ...]] = (
        *CongestionController._undo_state,
        "cwnd_prior",
        "w_max",
        "k",
        "t_epoch",
        "cwnd_epoch",
        "w_est",
        "hystart",
    )

    __slots__ = (
        "_limited_since",
        "cwnd_epoch",
        "cwnd_prior",
        "fast_convergence",
        "hystart",
        "k",
        "t_epoch",
        "w_est",
        "w_max",
    )

    def __init__(
        self,
        *,
        mss: int,
        initial_window: int,
        fast_convergence: bool = True,
        hystart: bool = True,
        hystart_limit: int | None = NON_PACED_L,
    ) -> None:
        super().__init__(mss=mss, initial_window=initial_window)
        # RFC 9438 4.7: fast convergence SHOULD be implemented (and is on by default).
        self.fast_convergence = fast_convergence
        self.hystart: HyStart | None = HyStart(limit=hystart_limit) if hystart else None
        # RFC 9438 4.1.2 variables, in segments and seconds.
        self.cwnd_prior = 0.0
        self.w_max: float | None = None  # None: undefined (no congestion event yet)
        self.k = 0.0
        self.t_epoch: float | None = None  # None: no congestion avoidance stage running
        self.cwnd_epoch = 0.0
        self.w_est = 0.0
        self._limited_since: float | None = None

    def w_cubic(self, t: float) -> float:
        """RFC 9438 4.2 (Figure 1): W_cubic(t) = C * (t - K)^3 + W_max, in segments."""
        assert self.w_max is not None, "W_cubic needs a congestion avoidance stage"
        return C * (t - self.k) ** 3 + self.w_max

    # -- hooks ---------------------------------------------------------------------------

    def _on_sent(self, *, now: float, sent: int, in_flight: int, snd_nxt: int) -> None:
        hystart = self.hystart
        if hystart is not None and hystart.window_end is None:  # what on_sent waits for
            hystart.on_sent(snd_nxt=snd_nxt - sent)

    def _on_ack(self, ack: AckSample) -> None:
        if ack.app_limited:
            # RFC 9438 5.8: no growth while application-limited, and (4.2) that time is not
            # part of t; the gap is cut out when the sender is cwnd-limited again.
            if self._limited_since is None:
                self._limited_since = ack.now
            return
        if self._limited_since is not None:
            self._skip_time(ack.now - self._limited_since, since=self._limited_since)
            self._limited_since = None
        if self.in_slow_start():
            self._slow_start(ack)
        else:
            self._congestion_avoidance(ack)

    def _on_loss(self, *, now: float, in_flight: int) -> None:
        self._reduce(in_flight)
        # The next congestion avoidance stage starts when recovery ends.
        self.t_epoch = None

    def _on_rto(self, *, now: float, in_flight: int) -> None:
        # RFC 9438 4.8: follow Reno (RFC 5681: cwnd = 1 SMSS) but set ssthresh with
        # beta_cubic as in 4.6; the next avoidance stage uses K = 0 and W_max = cwnd_epoch.
        self._reduce(in_flight)
        self.w_max = None
        self.cwnd = self.mss
        self._cwnd_frac = 0.0
        self.t_epoch = None

    def _on_recovery_end(self, *, now: float) -> None:
        super()._on_recovery_end(now=now)
        # RFC 9438 4.2: the congestion avoidance stage starts now.
        self._start_epoch(now)

    def _on_idle(self, *, now: float, idle: float) -> None:
        # RFC 9438 5.8: idle time is not part of t (unless already counted as app-limited).
        if self._limited_since is None:
            self._skip_time(idle, since=now - idle)

    def _on_window_reset(self, *, now: float) -> None:
        # cwnd changed under the curve (RFC 7661): start a new stage from the new cwnd.
        self.t_epoch = None

    # -- the algorithm -------------------------------------------------------------------

    def _slow_start(self, ack: AckSample) -> None:
        hystart = self.hystart
        # RFC 9406 4.2: HyStart++ only in the initial slow start (ssthresh still initial);
        # it needs sequence offsets to count rounds.
        if hystart is None or self.ssthresh < INITIAL_SSTHRESH or ack.snd_nxt <= 0:
            self._reno_slow_start(ack.acked)
            return
        increase = hystart.on_ack(
            acked=ack.acked, rtt=ack.rtt, snd_una=ack.snd_una, snd_nxt=ack.snd_nxt, mss=self.mss
        )
        if increase is None:
            # RFC 9406 4.2: CSS is complete; ssthresh = cwnd. RFC 9438 4.10: W_max is
            # undefined, cwnd_prior = cwnd, and the avoidance stage uses K = 0.
            self.ssthresh = self.cwnd
            self.cwnd_prior = self._exact_cwnd() / self.mss
            self.w_max = None
            self.t_epoch = None
            return
        self.cwnd += increase

    def _start_epoch(self, now: float) -> None:
        cwnd = self._exact_cwnd() / self.mss
        self.t_epoch = now
        self.cwnd_epoch = cwnd
        # RFC 9438 4.3: W_est = cwnd_epoch at the start of the avoidance stage.
        self.w_est = cwnd
        if self.w_max is None:
            # RFC 9438 4.8 / 4.10: W_max undefined: K = 0 and W_max = cwnd_epoch.
            self.w_max = cwnd
            self.k = 0.0
        else:
            # RFC 9438 4.2 (Figure 2): K = cbrt((W_max - cwnd_epoch) / C).
            self.k = _cbrt((self.w_max - cwnd) / C)

    def _congestion_avoidance(self, ack: AckSample) -> None:
        if self.t_epoch is None:
            self._start_epoch(ack.now)
        assert self.t_epoch is not None
        cwnd = self._exact_cwnd() / self.mss
        segments_acked = ack.acked / self.mss
        t = ack.now - self.t_epoch
        # RFC 9438 4.3 (Figure 4); alpha_cubic becomes 1 once W_est >= cwnd_prior.
        alpha = 1.0 if self.w_est >= self.cwnd_prior else ALPHA_CUBIC
        self.w_est += alpha * segments_acked / cwnd
        if self.w_cubic(t) < self.w_est:
            # RFC 9438 4.3: the Reno-friendly region, cwnd = W_est (4.2: the larger of
            # W_cubic(t) and W_est; never below the current cwnd).
            new = max(cwnd, self.w_est)
        else:
            # RFC 9438 4.2 (Figure 3): target = W_cubic(t + RTT) bounded to [cwnd, 1.5 cwnd],
            # RTT the smoothed RTT; 4.4 / 4.5: cwnd += (target - cwnd) / cwnd per segment.
            rtt = self.srtt if self.srtt is not None else 0.0
            target = min(max(self.w_cubic(t + rtt), cwnd), 1.5 * cwnd)
            new = cwnd + (target - cwnd) / cwnd * segments_acked
        self._set_exact_cwnd(new * self.mss)

    def _reduce(self, in_flight: int) -> None:
        cwnd = self._exact_cwnd() / self.mss
        # RFC 9438 4.7: fast convergence, applied to W_max before the reduction.
        if self.fast_convergence and self.w_max is not None and cwnd < self.w_max:
            self.w_max = cwnd * (1 + BETA_CUBIC) / 2
        else:
            self.w_max = cwnd
        # RFC 9438 4.6 (Figure 5): ssthresh = flight_size * beta_cubic, cwnd_prior = cwnd,
        # cwnd = max(ssthresh, 2) on loss, ssthresh at least 2 segments.
        self.cwnd_prior = cwnd
        self.ssthresh = max(int(in_flight * BETA_CUBIC), 2 * self.mss)
        self.cwnd = self.ssthresh
        self._cwnd_frac = 0.0

    def _skip_time(self, duration: float, *, since: float) -> None:
        if self.t_epoch is None or duration <= 0:
            return
        # Only the part of the gap after the stage began shifts it.
        self.t_epoch += max(0.0, min(duration, since + duration - self.t_epoch))
