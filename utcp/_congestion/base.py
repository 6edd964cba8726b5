"""The interface every congestion controller implements (keyword-only ``on_*`` calls)."""

from __future__ import annotations

import abc


class CongestionController(abc.ABC):
    """Owns ``cwnd`` and ``ssthresh`` (bytes). The connection tells it what happened."""

    name: str = "?"

    def __init__(self, *, mss: int, initial_window: int) -> None:
        self.mss = mss
        # RFC 6928 2: IW = min(10*MSS, max(2*MSS, 14600)); other sizes scale the same cap.
        cap = max(2 * mss, 14600 * initial_window // 10)
        self.cwnd = min(initial_window * mss, cap)
        self.ssthresh: int = 1 << 62  # RFC 5681 3.1: arbitrarily high

    def in_slow_start(self) -> bool:
        return self.cwnd < self.ssthresh

    @abc.abstractmethod
    def on_ack(self, *, now: float, acked: int, rtt: float | None, in_flight: int) -> None:
        """``acked`` bytes were newly acknowledged (cumulatively or by SACK) outside recovery."""

    @abc.abstractmethod
    def on_congestion(self, *, now: float, in_flight: int) -> None:
        """Loss detected by duplicate ACKs / SACK: entering fast recovery."""

    @abc.abstractmethod
    def on_rto(self, *, now: float, in_flight: int) -> None:
        """The retransmission timer expired."""

    def on_recovery_end(self, *, now: float) -> None:
        """Fast recovery finished (the recovery point was acknowledged)."""
        self.cwnd = max(self.ssthresh, self.mss)
