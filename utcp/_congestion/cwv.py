"""Congestion window validation for rate-limited senders (RFC 7661, "new CWV").

Every controller gets this through ``CongestionController``; the algorithms never call it.

What is implemented, rule by rule:

- pipeACK (RFC 7661 4.2). One sample per round: the bytes cumulatively acknowledged between
  two round markers, where a round ends when SND.UNA reaches the SND.NXT recorded when it
  began. No sample is taken while in loss recovery. pipeACK is the largest sample of the
  last pipeACK Sampling Period, PSP = max(3 * SRTT, 1 s). It is *undefined* before the first
  sample and after a retransmission timeout or an NVP loss response (RFC 7661 4.1), and 0
  once every sample has aged out (an idle sender had nothing acknowledged in the PSP).
- Phase (RFC 7661 4.3). The sender is in the validated phase when pipeACK is undefined, when
  pipeACK >= cwnd / 2, or when the ACK reports the sender cwnd-limited (``app_limited`` False,
  RFC 7661 4.5.3); otherwise it is in the non-validated phase (NVP).
- Growth (RFC 7661 4.4, RFC 9438 5.8). Each algorithm grows cwnd only on ACKs with
  ``app_limited`` False. That is the rule which keeps a rate-limited sender from inflating
  cwnd; LEDBAT still applies its delay-driven decreases.
- End of the NVP (RFC 7661 4.4.3). For each whole Non-validated Period (NVP, 5 minutes,
  RFC 7661 5) without validation, idle time included: ssthresh = max(ssthresh, 3/4 cwnd) and
  cwnd = max(cwnd / 2, IW), never raising cwnd. Checked on every ACK, every send and every
  restart after idle, so an idle connection pays when it sends again.
- Loss in the NVP (RFC 7661 4.4.1). LossFlightSize is FlightSize when loss recovery starts.
  When recovery ends, cwnd = max((max(pipeACK, LossFlightSize) - R) / 2, 2 SMSS), where R is
  the bytes the connection reports lost during the recovery; ssthresh = cwnd, so the sender
  continues in congestion avoidance, and pipeACK becomes undefined again.

Not implemented: RFC 7661 4.4.2 burst control (utcp paces every window instead, see
``Config.pacing``), and the RFC 5681 4.1 restart window, which RFC 7661 replaces: an idle
sender keeps cwnd until the NVP ends.
The whole mechanism is inactive until an ACK carries sequence offsets (``snd_nxt`` > 0).
"""

from __future__ import annotations

# RFC 7661 5: cwnd is preserved for at most five minutes without validation.
NON_VALIDATED_PERIOD = 300.0
# RFC 7661 4.2: PSP = max(3 * RTT, 1 second).
PSP_MIN = 1.0
PSP_RTTS = 3


class WindowValidation:
    """pipeACK measurement and the validated / non-validated phase of one connection."""

    __slots__ = (
        "_round_end",
        "_round_una",
        "_samples",
        "active",
        "in_recovery",
        "loss_flight_size",
        "pipe_ack",
        "validated",
        "validated_at",
    )

    def __init__(self) -> None:
        self.active = False  # an ACK with sequence offsets has been seen
        self.pipe_ack: int | None = None  # bytes; None is RFC 7661's "undefined"
        self.validated = True
        self.validated_at: float | None = None  # last time the phase was validated
        self.in_recovery = False
        self.loss_flight_size: int | None = None  # set when loss starts in the NVP
        # A list, not a deque (768 bytes even empty, bench/README.md "Scale"): it holds one
        # sample per round trip of the last PSP at most, in decreasing order, and loses
        # its expired front in one slice.
        self._samples: list[tuple[float, int]] = []
        self._round_una = 0
        self._round_end: int | None = None

    def on_ack(
        self,
        *,
        now: float,
        snd_una: int,
        snd_nxt: int,
        cwnd: int,
        srtt: float | None,
        cwnd_limited: bool,
    ) -> None:
        """Take a pipeACK sample when a round ends and re-evaluate the phase."""
        if snd_nxt <= 0:
            return
        self.active = True
        if self._round_end is None:
            self._round_una, self._round_end = snd_una, snd_nxt
        elif snd_una >= self._round_end:
            # RFC 7661 4.2: a sample is the data acknowledged over about one RTT; none are
            # taken during loss recovery.
            if not self.in_recovery:
                self._add_sample(now, snd_una - self._round_una)
            self._round_una, self._round_end = snd_una, snd_nxt
        # RFC 7661 4.2: pipeACK is the largest sample of the last PSP.
        psp = max(PSP_RTTS * srtt, PSP_MIN) if srtt is not None else PSP_MIN
        samples = self._samples
        if samples and samples[0][0] < now - psp:
            expired = 1
            while expired < len(samples) and samples[expired][0] < now - psp:
                expired += 1
            del samples[:expired]
        if samples:
            self.pipe_ack = samples[0][1]
        elif self.pipe_ack is not None:
            self.pipe_ack = 0
        # RFC 7661 4.3: validated when pipeACK >= cwnd / 2 (or undefined), or cwnd-limited.
        self.validated = cwnd_limited or self.pipe_ack is None or 2 * self.pipe_ack >= cwnd
        if self.validated or self.validated_at is None:
            self.validated_at = now

    def _add_sample(self, now: float, sample: int) -> None:
        # A sliding-window maximum: samples are kept in decreasing order, so the oldest one
        # left is the largest of the period; a sample no larger than a newer one can never
        # be the maximum again and is dropped.
        samples = self._samples
        while samples and samples[-1][1] <= sample:
            samples.pop()
        samples.append((now, sample))

    def expired_periods(self, now: float) -> int:
        """Whole NVPs elapsed since the phase was last validated (each costs a reduction)."""
        if not self.active or self.validated_at is None:
            return 0
        periods = int((now - self.validated_at) // NON_VALIDATED_PERIOD)
        if periods > 0:
            self.validated_at += periods * NON_VALIDATED_PERIOD
        return periods

    def on_loss(self, *, in_flight: int) -> None:
        """Loss recovery starts; remember LossFlightSize if it starts in the NVP."""
        self.in_recovery = True
        if self.active and not self.validated:
            self.loss_flight_size = in_flight

    def on_recovery_end(self, *, lost: int, mss: int) -> int | None:
        """The window RFC 7661 4.4.1 prescribes after an NVP loss, or None to keep the usual."""
        self.in_recovery = False
        if self.loss_flight_size is None:
            return None
        # RFC 7661 4.4.1: cwnd = (max(pipeACK, LossFlightSize) - R) / 2.
        base = max(self.pipe_ack or 0, self.loss_flight_size)
        self.reset()
        return max((base - lost) // 2, 2 * mss)

    def reset(self) -> None:
        """Forget the measurement: pipeACK undefined, validated phase (RFC 7661 4.1)."""
        self.pipe_ack = None
        self.validated = True
        self.validated_at = None
        self.in_recovery = False
        self.loss_flight_size = None
        self._samples.clear()
        self._round_end = None
