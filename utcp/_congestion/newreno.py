"""NewReno congestion control (RFC 5681, RFC 6582)."""

from __future__ import annotations

from .base import CongestionController


class NewReno(CongestionController):
    name = "newreno"

    def __init__(self, *, mss: int, initial_window: int) -> None:
        super().__init__(mss=mss, initial_window=initial_window)
        self._acked_in_ca = 0

    def on_ack(self, *, now: float, acked: int, rtt: float | None, in_flight: int) -> None:
        if self.in_slow_start():
            # RFC 3465 (appropriate byte counting): grow by the bytes acknowledged. utcp
            # acknowledges once per received batch, so its ACKs are often stretch ACKs; the
            # RFC 5681 3.1 per-ACK cap of one SMSS would then starve slow start. Like Linux,
            # we count bytes (at most 2*SMSS beyond ssthresh, RFC 3465 2.3's limit L).
            self.cwnd = min(self.cwnd + acked, max(self.ssthresh, self.cwnd + 2 * self.mss))
            return
        # RFC 5681 3.1 (eq. 3), byte counting: one SMSS per cwnd of data acknowledged.
        self._acked_in_ca += acked
        if self._acked_in_ca >= self.cwnd:
            self._acked_in_ca -= self.cwnd
            self.cwnd += self.mss

    def on_congestion(self, *, now: float, in_flight: int) -> None:
        # RFC 5681 3.2 (eq. 4): ssthresh = max(FlightSize / 2, 2*SMSS); RFC 6675 5 (4.2):
        # with a pipe-limited sender cwnd = ssthresh.
        self.ssthresh = max(in_flight // 2, 2 * self.mss)
        self.cwnd = self.ssthresh
        self._acked_in_ca = 0

    def on_rto(self, *, now: float, in_flight: int) -> None:
        # RFC 5681 3.1 (eq. 4) and "LW": cwnd = 1 SMSS after a timeout.
        self.ssthresh = max(in_flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self._acked_in_ca = 0
