"""NewReno congestion control (RFC 5681, RFC 6582), with RFC 3465 byte counting."""

from __future__ import annotations

from typing import ClassVar

from .base import AckSample, CongestionController


class NewReno(CongestionController):
    name: ClassVar[str] = "newreno"
    _undo_state: ClassVar[tuple[str, ...]] = (
        *CongestionController._undo_state,
        "_acked_in_ca",
    )

    __slots__ = ("_acked_in_ca",)

    def __init__(self, *, mss: int, initial_window: int) -> None:
        super().__init__(mss=mss, initial_window=initial_window)
        self._acked_in_ca = 0

    def _on_ack(self, ack: AckSample) -> None:
        if ack.app_limited:
            # RFC 7661 4.4: a rate-limited sender does not grow cwnd it is not using.
            return
        if self.in_slow_start():
            self._reno_slow_start(ack.acked)
            return
        # RFC 5681 3.1 (eq. 3), byte counting: one SMSS per cwnd of data acknowledged.
        self._acked_in_ca += ack.acked
        if self._acked_in_ca >= self.cwnd:
            self._acked_in_ca -= self.cwnd
            self.cwnd += self.mss

    def _on_loss(self, *, now: float, in_flight: int) -> None:
        # RFC 5681 3.2 (eq. 4): ssthresh = max(FlightSize / 2, 2*SMSS); RFC 6675 5 (4.2):
        # with a pipe-limited sender cwnd = ssthresh.
        self.ssthresh = max(in_flight // 2, 2 * self.mss)
        self.cwnd = self.ssthresh
        self._cwnd_frac = 0.0
        self._acked_in_ca = 0

    def _on_rto(self, *, now: float, in_flight: int) -> None:
        # RFC 5681 3.1 (eq. 4) and "LW": cwnd = 1 SMSS after a timeout.
        self.ssthresh = max(in_flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self._cwnd_frac = 0.0
        self._acked_in_ca = 0
