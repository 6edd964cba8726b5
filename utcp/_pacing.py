"""The sender's pacer: spreads a window of segments over the round-trip time.

It keeps a pacing clock (the earliest time the next segment may leave) and says whether
output may go now or must wait, and until when. The rate comes from the caller
(``LossRecovery``), which knows cwnd and SRTT.
"""

from __future__ import annotations

# Pacing: the pacing clock may run this far ahead of now, so segments leave in bursts of
# about 1 ms of the pacing rate (Linux sizes its bursts the same way, sk_pacing_shift 10),
# and at least PACING_BURST segments: at high rates a timer per segment costs more than the
# burst it avoids.
PACING_BURST = 2
PACING_QUANTUM = 0.001


def pacing_rate(*, srtt: float | None, cwnd: int, mss: int, slow_start: bool) -> float | None:
    """Bytes per second: a window over the RTT at rate cwnd/SRTT (x2 in slow start, x1.25
    after, as Linux does). None without an RTT estimate."""
    if srtt is None or srtt <= 0:
        return None
    gain = 2.0 if slow_start else 1.25
    return gain * max(cwnd, mss) / srtt


class Pacer:
    """The pacing clock of one sender."""

    __slots__ = ("_blocked", "_next", "_wake")

    def __init__(self) -> None:
        self._next = 0.0  # earliest time the next paced segment may leave
        self._blocked = False  # output is waiting for the pacing clock...
        self._wake = 0.0  # ...until then

    def deadline(self) -> float | None:
        """When output held back by the pacer may go, or None if nothing waits."""
        return self._wake if self._blocked else None

    def release(self, now: float | None = None) -> None:
        """Output runs again (at ``now`` if the wait is over; always if ``now`` is None)."""
        if now is None or now >= self._wake:
            self._blocked = False

    def on_sent(self, n: int, now: float, rate: float | None) -> None:
        if rate is not None:
            last = self._next
            self._next = (last if last > now else now) + n / rate

    def allows(self, now: float, rate: float | None, mss: int) -> bool:
        """The pacing clock may run a burst (PACING_QUANTUM, PACING_BURST) ahead of now."""
        return self.allows_ahead(now, burst(rate, mss))

    def allows_ahead(self, now: float, ahead: float | None) -> bool:
        """``allows`` with the burst (``burst(rate, mss)``) computed by the caller."""
        if ahead is None:
            return True
        wake = self._next - ahead
        if now >= wake:
            return True
        self._blocked = True
        self._wake = wake
        return False


def burst(rate: float | None, mss: int) -> float | None:
    """How far ahead of now the pacing clock may run at ``rate`` (None: no pacing)."""
    if rate is None:
        return None
    return max(PACING_BURST * mss / rate, PACING_QUANTUM)
