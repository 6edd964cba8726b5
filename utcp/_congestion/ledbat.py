"""LEDBAT (RFC 6817): a scavenger that yields to other traffic once it builds a queue.

RFC 6817 measures one-way delay from timestamps in every data packet. utcp has only the
round-trip time, so, as LEDBAT++ does, this controller takes each RTT sample as the delay:
the base delay is the minimum RTT over the last ``BASE_HISTORY`` minutes and the queuing
delay is the filtered current RTT minus that base. Queues on the return path therefore
count too, which only makes the scavenger yield more readily.

Per RFC 6817 there is no slow start: cwnd starts at INIT_CWND = 2 segments and moves by
GAIN * off_target segments per window acknowledged, growing while the queuing delay is below
TARGET and shrinking above it; a loss halves it. ``ssthresh`` is kept but not used.
"""

from __future__ import annotations

import math
from collections import deque
from typing import ClassVar

from .base import AckSample, CongestionController

# RFC 6817 2.5: TARGET MUST be 100 ms or less.
TARGET = 0.100
# RFC 6817 2.5: GAIN MUST be 1 or less.
GAIN = 1.0
# RFC 6817 2.5: BASE_HISTORY SHOULD be 10 (one-minute minima).
BASE_HISTORY = 10
BASE_INTERVAL = 60.0
# RFC 6817 2.5: at least 4 delay samples per RTT, and none older than an RTT.
CURRENT_FILTER = 4
# RFC 6817 2.5: INIT_CWND and MIN_CWND SHOULD both be 2; ALLOWED_INCREASE SHOULD be 1.
INIT_CWND = 2
MIN_CWND = 2
ALLOWED_INCREASE = 1


class Ledbat(CongestionController):
    name: ClassVar[str] = "ledbat"

    __slots__ = ("_last_rollover", "base_delays", "current_delays", "target")

    def __init__(self, *, mss: int, initial_window: int, target: float = TARGET) -> None:
        if not 0 < target <= TARGET:
            raise ValueError(f"LEDBAT target must be in (0, {TARGET}] seconds, not {target}")
        super().__init__(mss=mss, initial_window=initial_window)
        self.target = target
        self.cwnd = min(self.cwnd, INIT_CWND * mss)
        # RFC 6817 2.4.2: base_delays starts as BASE_HISTORY entries of +infinity.
        self.base_delays: deque[float] = deque([math.inf] * BASE_HISTORY, maxlen=BASE_HISTORY)
        self.current_delays: deque[tuple[float, float]] = deque(maxlen=CURRENT_FILTER)
        self._last_rollover: float | None = None

    def in_slow_start(self) -> bool:
        return False

    def base_delay(self) -> float:
        """RFC 6817 2.4.2 BASE_DELAY(): the minimum of the per-minute minima."""
        return min(self.base_delays)

    def queuing_delay(self) -> float | None:
        """FILTER(current_delays) - BASE_DELAY(), with a MIN filter; None before any sample."""
        if not self.current_delays:
            return None
        return min(delay for _, delay in self.current_delays) - self.base_delay()

    def _on_ack(self, ack: AckSample) -> None:
        if ack.rtt is not None:
            self._update_base_delay(ack.now, ack.rtt)
            self.current_delays.append((ack.now, ack.rtt))
        # RFC 6817 2.5: CURRENT_FILTER samples, none older than an RTT (keep the newest).
        horizon = ack.now - (self.srtt if self.srtt is not None else math.inf)
        while len(self.current_delays) > 1 and self.current_delays[0][0] < horizon:
            self.current_delays.popleft()
        queuing = self.queuing_delay()
        if queuing is None:
            return
        # RFC 6817 2.4.2: off_target = (TARGET - queuing_delay) / TARGET;
        # cwnd += GAIN * off_target * bytes_newly_acked * MSS / cwnd.
        off_target = (self.target - queuing) / self.target
        window = self._exact_cwnd()
        change = GAIN * off_target * ack.acked * self.mss / window
        if change > 0 and ack.app_limited:
            # RFC 7661 4.4: no growth for a rate-limited sender (decreases still apply).
            change = 0.0
        window += change
        # RFC 6817 2.4.2: cwnd = min(cwnd, flightsize + ALLOWED_INCREASE * MSS), then
        # cwnd = max(cwnd, MIN_CWND * MSS).
        window = min(window, ack.in_flight + ALLOWED_INCREASE * self.mss)
        window = max(window, MIN_CWND * self.mss)
        self._set_exact_cwnd(window)

    def _on_loss(self, *, now: float, in_flight: int) -> None:
        # RFC 6817 2.4.2 on data loss: cwnd = min(cwnd, max(cwnd / 2, MIN_CWND * MSS)).
        self.cwnd = min(self.cwnd, max(self.cwnd // 2, MIN_CWND * self.mss))
        self._cwnd_frac = 0.0

    def _on_rto(self, *, now: float, in_flight: int) -> None:
        # RFC 6817 2.4.2: no ACK within a CTO: cwnd = 1 MSS and forget the current delays.
        self.cwnd = self.mss
        self._cwnd_frac = 0.0
        self.current_delays.clear()

    def _on_recovery_end(self, *, now: float) -> None:
        """The loss response already set cwnd; there is no ssthresh to deflate to."""

    def _update_base_delay(self, now: float, delay: float) -> None:
        # RFC 6817 2.4.2 update_base_delay(): one minimum per minute, BASE_HISTORY minutes.
        last = self._last_rollover
        if last is None or now // BASE_INTERVAL != last // BASE_INTERVAL:
            self._last_rollover = now
            self.base_delays.append(delay)
        else:
            self.base_delays[-1] = min(self.base_delays[-1], delay)
