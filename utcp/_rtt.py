"""Round-trip time estimation and the retransmission timeout (RFC 6298)."""

from __future__ import annotations

# RFC 6298 (2.2)/(2.3): alpha = 1/8, beta = 1/4, K = 4.
ALPHA = 0.125
BETA = 0.25
K = 4
# RFC 6298 (2.3)/(4): the clock granularity G; our clock is a float, 1 ms is a safe floor.
CLOCK_GRANULARITY = 0.001


class RttEstimator:
    """SRTT / RTTVAR / RTO per RFC 6298, with exponential backoff (5.5) kept apart so that
    a new measurement (or new data acknowledged) can clear it."""

    __slots__ = ("backoff", "latest_rtt", "max_rto", "min_rto", "min_rtt", "rto", "rttvar", "srtt")

    def __init__(self, *, initial_rto: float, min_rto: float, max_rto: float) -> None:
        self.min_rto = min_rto
        self.max_rto = max_rto
        # RFC 6298 (2.1): until a measurement is made, RTO = 1 s (configurable).
        self.rto = initial_rto
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self.min_rtt: float | None = None
        self.latest_rtt: float | None = None
        self.backoff = 0

    def on_sample(self, rtt: float) -> None:
        """Feed one RTT measurement (Karn's rule is the caller's job: RFC 6298 (3))."""
        if rtt < 0.0:
            rtt = 0.0
        self.latest_rtt = rtt
        if self.min_rtt is None or rtt < self.min_rtt:
            self.min_rtt = rtt
        if self.srtt is None or self.rttvar is None:
            # RFC 6298 (2.2): first measurement.
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            # RFC 6298 (2.3): RTTVAR before SRTT, with the old SRTT.
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - rtt)
            self.srtt = (1 - ALPHA) * self.srtt + ALPHA * rtt
        # RFC 6298 (2.3), (2.4) lower bound (configurable), (2.5) upper bound. The lower
        # bound applies to the variance term, as in Linux (RTO >= SRTT + min_rto): RFC 6298's
        # 1 s floor is what keeps its RTO clear of ordinary delay variation (delayed ACKs,
        # queueing); with a 200 ms floor on the whole RTO, a long path whose RTT is steady
        # would time out spuriously at the first few ms of extra queueing.
        rto = self.srtt + max(CLOCK_GRANULARITY, K * self.rttvar, self.min_rto)
        self.rto = min(rto, self.max_rto)
        # RFC 6298 (5.7) note: a fresh sample ends the backoff.
        self.backoff = 0

    def current_rto(self) -> float:
        """The RTO to arm now, including backoff (RFC 6298 (5.5)), capped by (2.5)."""
        rto = self.rto * (1 << min(self.backoff, 30)) if self.backoff else self.rto
        return rto if rto <= self.max_rto else self.max_rto

    def back_off(self) -> None:
        # RFC 6298 (5.5): double the RTO on expiry.
        self.backoff += 1

    def reset_after_syn_loss(self, rto: float) -> None:
        # RFC 6298 (5.7): if the SYN was retransmitted and no RTT sample came from the
        # handshake, RTO is re-initialised to 3 s when data transmission begins.
        if self.srtt is None:
            self.rto = min(max(rto, self.min_rto), self.max_rto)
        self.backoff = 0
