"""The interface every congestion controller implements (keyword-only ``on_*`` calls).

The connection tells the controller what happened; the controller owns ``cwnd`` and
``ssthresh`` (bytes) and nothing else. Calls, in the order a connection makes them:

- ``on_sent(now=, sent=, in_flight=, snd_nxt=)`` after new data left (not retransmissions).
  It notices a restart after idle by itself (nothing else was in flight) and calls
  ``on_idle``.
- ``on_ack(now=, acked=, rtt=, in_flight=, snd_una=, snd_nxt=, app_limited=)`` for an ACK
  that newly acknowledges data outside loss recovery. ``snd_una``/``snd_nxt`` are unwrapped
  64-bit offsets after the ACK, so controllers can count rounds (a round ends when
  ``snd_una`` reaches the ``snd_nxt`` recorded at its start).
- ``snapshot()`` just before ``on_loss(now=, in_flight=)`` (fast recovery starts) or
  ``on_rto(now=, in_flight=)`` (the retransmission timer fired), then
  ``on_recovery_end(now=, lost=)`` when the recovery point is acknowledged, or
  ``undo(snapshot)`` when the retransmission proves spurious (D-SACK, F-RTO, RACK).

Shared here: the RFC 6298 smoothed RTT and the minimum RTT that the algorithms read, and
RFC 7661 congestion window validation (``cwv.py``). Subclasses implement the ``_on_*``
hooks and name, in ``_undo_state``, the attributes a congestion response changes.
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

from .cwv import WindowValidation

# RFC 5681 3.1: "The initial value of ssthresh SHOULD be set arbitrarily high".
INITIAL_SSTHRESH = 1 << 62
# RFC 6298 (2.3): SRTT <- (1 - alpha) * SRTT + alpha * R', alpha = 1/8.
SRTT_ALPHA = 1 / 8


@dataclass(slots=True)
class AckSample:
    """What one ACK told the sender, as handed to ``_on_ack``. Not frozen: one is built per
    ACK, and a frozen dataclass sets each field through ``object.__setattr__`` (3x the cost
    of the plain constructor); controllers only read it."""

    now: float
    acked: int  # bytes newly acknowledged, cumulatively or by SACK
    rtt: float | None  # the latest RTT sample in seconds, if this ACK gave one
    in_flight: int  # FlightSize before this ACK (pipe + acked)
    snd_una: int  # 0 when the connection does not report offsets
    snd_nxt: int
    app_limited: bool  # the sender was limited by the application (or rwnd), not cwnd


@dataclass(frozen=True, slots=True)
class CongestionSnapshot:
    """State saved just before a congestion response; opaque to the connection."""

    owner: type[CongestionController]
    cwnd: int
    values: Mapping[str, object]


class CongestionController(abc.ABC):
    """Owns ``cwnd`` and ``ssthresh`` (bytes). The connection tells it what happened."""

    name: ClassVar[str] = "?"
    # Attributes a congestion response changes and ``undo`` restores (RFC 9438 4.9.2 lists
    # CUBIC's); subclasses extend the tuple.
    _undo_state: ClassVar[tuple[str, ...]] = ("cwnd", "ssthresh", "_cwnd_frac")
    __slots__ = (
        "_cwnd_frac",
        "_in_recovery",
        "_initial_window",
        "_last_activity",
        "cwnd",
        "cwv",
        "min_rtt",
        "mss",
        "srtt",
        "ssthresh",
    )

    def __init__(self, *, mss: int, initial_window: int) -> None:
        self.mss = mss
        self._initial_window = initial_window
        self.cwnd = self.initial_cwnd()
        self.ssthresh: int = INITIAL_SSTHRESH
        self.srtt: float | None = None
        self.min_rtt: float | None = None
        self.cwv = WindowValidation()
        self._cwnd_frac = 0.0  # growth below one byte, carried between ACKs
        self._in_recovery = False
        self._last_activity: float | None = None

    def initial_cwnd(self) -> int:
        """IW in bytes for the current MSS."""
        # RFC 6928 2: IW = min(10*MSS, max(2*MSS, 14600)); other sizes scale the same cap.
        cap = max(2 * self.mss, 14600 * self._initial_window // 10)
        return min(self._initial_window * self.mss, cap)

    def in_slow_start(self) -> bool:
        return self.cwnd < self.ssthresh

    def set_mss(self, mss: int, *, rescale_from: int | None = None) -> None:
        """The sender's segment size changed (negotiated by the SYNs, or TCP_MAXSEG).

        ``rescale_from``: the MSS the window was sized for until now; cwnd then keeps its
        size in segments (at least one), as the initial window is defined in segments
        (RFC 6928 2).
        """
        if rescale_from is not None:
            self.cwnd = max(self.cwnd * mss // max(1, rescale_from), mss)
        self.mss = mss

    def on_handshake_loss(self) -> None:
        """The SYN or SYN-ACK was retransmitted more than once: RFC 6928 2 (and RFC 5681
        3.1) then start with an initial window of one segment."""
        self.cwnd = min(self.cwnd, self.mss)
        self._cwnd_frac = 0.0

    def take_over(self, other: CongestionController) -> None:
        """TCP_CONGESTION: this controller replaces ``other``, keeping its cwnd and ssthresh."""
        self.cwnd, self.ssthresh = other.cwnd, other.ssthresh

    # -- the interface the connection calls ---------------------------------------------

    def on_sent(self, *, now: float, sent: int, in_flight: int, snd_nxt: int) -> None:
        """``sent`` bytes of new data just left; ``in_flight`` (pipe) and ``snd_nxt`` include them.

        A send with nothing else in flight is a restart: the time since the last send or ACK
        is reported to ``on_idle`` first.
        """
        if in_flight <= sent and self._last_activity is not None:
            idle = now - self._last_activity
            if idle > 0:
                self.on_idle(now=now, idle=idle)
        if now != self._last_activity:
            # At the time of the last send or ACK the non-validated periods were counted
            # already (every segment of an output pass shares its ``now``).
            self._expire_nvp(now)
        self._last_activity = now
        self._on_sent(now=now, sent=sent, in_flight=in_flight, snd_nxt=snd_nxt)

    def on_ack(
        self,
        *,
        now: float,
        acked: int,
        rtt: float | None,
        in_flight: int,
        snd_una: int = 0,
        snd_nxt: int = 0,
        app_limited: bool = False,
    ) -> None:
        """``acked`` bytes were newly acknowledged (cumulatively or by SACK) outside recovery.

        ``in_flight`` is FlightSize before this ACK. ``app_limited`` is True when, since the
        acknowledged data was sent, the sender ran out of data (or receive window) rather than
        congestion window; cwnd then does not grow (RFC 7661 4.4, RFC 9438 5.8).
        """
        if rtt is not None:
            self._rtt_sample(rtt)
        self._last_activity = now
        self.cwv.on_ack(
            now=now,
            snd_una=snd_una,
            snd_nxt=snd_nxt,
            cwnd=self.cwnd,
            srtt=self.srtt,
            cwnd_limited=not app_limited,
        )
        self._expire_nvp(now)
        self._on_ack(AckSample(now, acked, rtt, in_flight, snd_una, snd_nxt, app_limited))

    def on_loss(self, *, now: float, in_flight: int) -> None:
        """Loss detected by duplicate ACKs / SACK / RACK: fast recovery starts.

        ``in_flight`` is FlightSize when the loss is detected (pipe plus bytes deemed lost).
        """
        self._in_recovery = True
        self.cwv.on_loss(in_flight=in_flight)
        self._on_loss(now=now, in_flight=in_flight)

    def on_rto(self, *, now: float, in_flight: int, repeated: bool = False) -> None:
        """The retransmission timer expired; ``in_flight`` as for ``on_loss``.

        ``repeated``: it expired again for a segment it already retransmitted. RFC 5681 3.1
        then holds ssthresh constant: only cwnd returns to one segment (the loss window).
        """
        self._in_recovery = False
        self.cwv.reset()
        if repeated:
            self.cwnd = min(self.cwnd, self.mss)
            self._cwnd_frac = 0.0
            return
        self._on_rto(now=now, in_flight=in_flight)

    def on_recovery_end(self, *, now: float, lost: int = 0) -> None:
        """Fast recovery finished (the recovery point was acknowledged).

        ``lost`` is the number of bytes deemed lost during this recovery (RFC 7661's R);
        ignored unless the loss began in the non-validated phase. A call outside recovery
        (for instance after ``undo``) does nothing.
        """
        if not self._in_recovery:
            return
        self._in_recovery = False
        self._on_recovery_end(now=now)
        window = self.cwv.on_recovery_end(lost=lost, mss=self.mss)
        if window is not None:
            # RFC 7661 4.4.1: after a loss in the NVP, base cwnd on what was really in use.
            self.cwnd = window
            self.ssthresh = window
            self._cwnd_frac = 0.0
            self._on_window_reset(now=now)

    def on_idle(self, *, now: float, idle: float) -> None:
        """The sender restarts after ``idle`` seconds with nothing in flight.

        Called by ``on_sent``; the connection need not call it. Idle time counts toward the
        RFC 7661 non-validated period; RFC 7661 replaces the RFC 5681 4.1 restart window.
        """
        self._expire_nvp(now)
        self._on_idle(now=now, idle=idle)

    def snapshot(self) -> CongestionSnapshot:
        """Save the state a congestion response is about to change (call just before it)."""
        values = {name: copy.copy(getattr(self, name)) for name in self._undo_state}
        return CongestionSnapshot(type(self), self.cwnd, MappingProxyType(values))

    def undo(self, snapshot: object) -> None:
        """A congestion response proved spurious: restore the state ``snapshot()`` saved.

        The recovery the response began is over either way (a later ``on_recovery_end`` does
        nothing). cwnd, ssthresh and the algorithm's variables are restored only while cwnd
        is still below the saved cwnd; otherwise the current values are kept (RFC 9438
        4.9.2). A snapshot taken by another algorithm (before a switch) is ignored.
        """
        if not isinstance(snapshot, CongestionSnapshot):
            raise TypeError(f"undo() takes what snapshot() returned, not {snapshot!r}")
        if snapshot.owner is not type(self):
            return
        self._in_recovery = False
        self.cwv.in_recovery = False
        self.cwv.loss_flight_size = None
        if self.cwnd >= snapshot.cwnd:
            return
        for name, value in snapshot.values.items():
            setattr(self, name, copy.copy(value))

    # -- helpers for the algorithms ------------------------------------------------------

    def _exact_cwnd(self) -> float:
        """cwnd in bytes including the carried fraction."""
        return self.cwnd + self._cwnd_frac

    def _set_exact_cwnd(self, window: float) -> None:
        whole = math.floor(window)
        self.cwnd = int(whole)
        self._cwnd_frac = window - whole

    def _reno_slow_start(self, acked: int) -> None:
        # RFC 3465 (appropriate byte counting): grow by the bytes acknowledged. utcp
        # acknowledges once per received batch, so its ACKs are often stretch ACKs; the
        # RFC 5681 3.1 per-ACK cap of one SMSS would then starve slow start. Like Linux,
        # we count bytes (at most 2*SMSS beyond ssthresh, RFC 3465 2.3's limit L).
        self.cwnd = min(self.cwnd + acked, max(self.ssthresh, self.cwnd + 2 * self.mss))

    def _rtt_sample(self, rtt: float) -> None:
        # RFC 6298 (2.2) first sample, (2.3) later ones; RFC 9438 4.1.2 wants this SRTT.
        self.srtt = rtt if self.srtt is None else self.srtt + SRTT_ALPHA * (rtt - self.srtt)
        self.min_rtt = rtt if self.min_rtt is None else min(self.min_rtt, rtt)

    def _expire_nvp(self, now: float) -> None:
        periods = self.cwv.expired_periods(now)
        if not periods:
            return
        for _ in range(periods):
            # RFC 7661 4.4.3: at the end of each non-validated period.
            self.ssthresh = max(self.ssthresh, 3 * self.cwnd // 4)
            self.cwnd = min(self.cwnd, max(self.cwnd // 2, self.initial_cwnd()))
        self._cwnd_frac = 0.0
        self._on_window_reset(now=now)

    # -- hooks ---------------------------------------------------------------------------

    @abc.abstractmethod
    def _on_ack(self, ack: AckSample) -> None:
        """Grow (or, for delay-based algorithms, shrink) cwnd for one ACK."""

    @abc.abstractmethod
    def _on_loss(self, *, now: float, in_flight: int) -> None:
        """The multiplicative decrease on entering fast recovery."""

    @abc.abstractmethod
    def _on_rto(self, *, now: float, in_flight: int) -> None:
        """The response to a retransmission timeout."""

    def _on_recovery_end(self, *, now: float) -> None:
        # RFC 6582 3.2 (3) / RFC 6675 5: a full ACK deflates cwnd to ssthresh.
        self.cwnd = max(self.ssthresh, self.mss)
        self._cwnd_frac = 0.0

    def _on_sent(self, *, now: float, sent: int, in_flight: int, snd_nxt: int) -> None:  # noqa: B027
        """New data left; nothing to do unless the algorithm tracks rounds from sends."""

    def _on_idle(self, *, now: float, idle: float) -> None:  # noqa: B027
        """The sender restarts after an idle period."""

    def _on_window_reset(self, *, now: float) -> None:  # noqa: B027
        """cwnd was replaced from outside the algorithm (RFC 7661 reductions)."""
