"""Frozen per-connection configuration with documented defaults.

Every knob a user can turn lives here, so a connection's behaviour is a function of its
``Config`` plus its inputs. ``Config.replace(**changes)`` derives a variant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# WIRE.md "Sizes": 1500 - 20 (IPv4) - 8 (UDP) - 20 (TCP) and 1500 - 40 (IPv6) - 8 - 20.
DEFAULT_MSS_IPV4 = 1452
DEFAULT_MSS_IPV6 = 1432
# RFC 9293 3.7.1: a peer that sends no MSS option is assumed to accept 536 bytes.
DEFAULT_PEER_MSS = 536


@dataclass(frozen=True)
class Config:
    """Tunables of one utcp connection. All times are in seconds.

    Attributes:
        mss: largest payload we accept and send; None derives it from the address family
            (1452 for IPv4, 1432 for IPv6, WIRE.md "Sizes").
        send_buffer_size: bytes the application may queue beyond what the peer acknowledged.
        receive_buffer_size: bytes buffered for the application, in order or not; this bounds
            the advertised window.
        window_scaling / sack / timestamps: offer RFC 7323 window scale, RFC 2018 SACK and
            RFC 7323 timestamps in our SYN; each is used only if the peer offers it too.
        nodelay: disable Nagle's algorithm (RFC 9293 3.7.4) when True.
        delayed_ack: delayed-ACK timer (RFC 9293 3.8.6.3 allows up to 0.5 s; RFC 5681 4.2
            asks for under 0.5 s; Linux uses 40 ms).
        quick_ack_gap: while full-sized segments arrive on average at least this far apart,
            each one is acknowledged at once instead of every second one. Holding the first
            of a pair would stall the sender's ACK clock for a whole inter-arrival gap (about
            5% of the goodput of a 3 Mbit/s, 50 ms flow), and the ACKs it saves are at most
            1/quick_ack_gap per second. 0 always delays.
        quick_acks: at connection start and after a pause in the peer's data longer than
            the RTO, up to this many data segments are acknowledged at once (fewer with a
            small window: rcv_wnd / (2 * MSS), at least 2), so the peer's slow start is not
            paced by our delayed-ACK timer; not while our replies carry the ACKs. Linux's
            quick-ACK mode, whose bound TCP_MAX_QUICKACKS is 16. 0 turns it off.
        initial_rto / min_rto / max_rto: RFC 6298 (2.1), (2.4), (2.5). min_rto defaults to
            200 ms like Linux rather than RFC 6298's conservative 1 s.
        connect_timeout: give up an active open after this long (SYNs back off meanwhile).
        max_retransmissions: consecutive RTO expiries, or zero-window probes the peer leaves
            unanswered, before the connection is timed out (RFC 9293 3.8.3 "R2"; Linux's
            tcp_retries2 is 15 and bounds its window probes too).
        user_timeout: if set, fail the connection when sent data stays unacknowledged this
            long, or data waits this long behind a closed window whose probes go unanswered
            (RFC 9293 3.8.3 USER TIMEOUT, RFC 5482 semantics; Linux's TCP_USER_TIMEOUT).
        msl: maximum segment lifetime; TIME-WAIT lasts 2 * msl (RFC 9293 3.4.2).
        fin_wait_2_timeout: how long an orphaned connection (closed by the application) waits
            in FIN-WAIT-2 for the peer's FIN (Linux tcp_fin_timeout).
        keepalive, keepalive_idle, keepalive_interval, keepalive_count: RFC 9293 3.8.4 and
            RFC 1122 4.2.3.6; off by default, idle default 2 hours.
        congestion_control: name of the congestion controller.
        initial_window: initial congestion window in segments (RFC 6928).
        tail_loss_probe: RFC 8985 7 tail loss probes (with SACK): a lost last segment is
            probed for after about 2 SRTT instead of waiting for the RTO (Linux
            tcp_early_retrans).
        pacing: spread each window over the round trip (rate 2x cwnd/SRTT in slow start,
            1.25x after) instead of sending it in one burst.
        challenge_ack_limit: challenge ACKs per second per connection (RFC 5961 7).
    """

    mss: int | None = None
    send_buffer_size: int = 1 << 20
    receive_buffer_size: int = 1 << 20
    window_scaling: bool = True
    sack: bool = True
    timestamps: bool = True
    nodelay: bool = False
    delayed_ack: float = 0.040
    quick_ack_gap: float = 0.001
    quick_acks: int = 16
    initial_rto: float = 1.0
    min_rto: float = 0.2
    max_rto: float = 60.0
    connect_timeout: float = 75.0
    max_retransmissions: int = 15
    user_timeout: float | None = None
    msl: float = 30.0
    fin_wait_2_timeout: float = 60.0
    keepalive: bool = False
    keepalive_idle: float = 7200.0
    keepalive_interval: float = 75.0
    keepalive_count: int = 9
    congestion_control: str = "cubic"
    initial_window: int = 10
    pacing: bool = True
    tail_loss_probe: bool = True
    challenge_ack_limit: int = 100

    def __post_init__(self) -> None:
        if self.mss is not None and not 64 <= self.mss <= 65495:
            raise ValueError(f"mss must be in 64..65495, not {self.mss}")
        for name in ("send_buffer_size", "receive_buffer_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.receive_buffer_size > (65535 << 14):
            raise ValueError("receive_buffer_size exceeds what window scale 14 can advertise")
        if not 0 < self.min_rto <= self.initial_rto <= self.max_rto:
            raise ValueError("need 0 < min_rto <= initial_rto <= max_rto")
        if not 0 <= self.delayed_ack <= 0.5:
            raise ValueError("delayed_ack must be within 0..0.5 s (RFC 9293 3.8.6.3)")
        if self.quick_ack_gap < 0 or self.quick_acks < 0:
            raise ValueError("quick_ack_gap and quick_acks must not be negative")
        for name in ("connect_timeout", "msl", "fin_wait_2_timeout", "keepalive_idle"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.keepalive_interval <= 0 or self.keepalive_count < 1:
            raise ValueError("keepalive_interval must be positive and keepalive_count >= 1")
        if self.user_timeout is not None and self.user_timeout <= 0:
            raise ValueError("user_timeout must be positive or None")
        if self.max_retransmissions < 1 or self.initial_window < 1:
            raise ValueError("max_retransmissions and initial_window must be >= 1")

    def replace(self, **changes: object) -> Config:
        """A copy with ``changes`` applied (validated like the original)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def local_mss(self, ipv6: bool) -> int:
        if self.mss is not None:
            return self.mss
        return DEFAULT_MSS_IPV6 if ipv6 else DEFAULT_MSS_IPV4
