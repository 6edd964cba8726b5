"""Frozen per-connection configuration with documented defaults.

Every knob a user can turn lives here, so a connection's behaviour is a function of its
``Config`` plus its inputs. ``Config.replace(**changes)`` derives a variant. A ``Config`` is
checked when it is built: a wrong type, a value out of range or an unknown congestion
control raises ``TypeError``/``ValueError`` there, never later inside a connection.

Dead-peer defaults. utcp is a library for interactive programs, whose users expect a dead
peer or an unreachable address to be reported in seconds to tens of seconds, not after the
kernel's 75 s connect timeout and 15 minutes of retransmissions; its paths also cross NATs
whose UDP bindings expire after about 30 s of silence. So (README "Dead peers and timeouts"):

- ``connect_timeout`` 30 s. RFC 9293 3.8.3 (MUST-23) wants a SYN retransmitted for at least
  3 minutes but lets the application give up sooner; this is that application give-up.
- ``user_timeout`` 30 s: sent data unacknowledged for 30 s fails the connection (RFC 9293
  3.8.3 USER TIMEOUT, RFC 5482), long before ``max_retransmissions`` (15, about R2 of RFC
  9293 3.8.3, >= 100 s) would. A peer that vanishes mid-upload is detected in 30 s, and in
  about one RTO when its host answers with port unreachables (``on_kernel_error``).
- ``keepalive`` on, 20 s idle, 5 s interval, 3 probes: a silent peer is detected 35 s after
  it went quiet, and an idle connection sends a probe before a 30 s NAT binding expires
  (even if the first probe is lost). RFC 4787 REQ-5 asks NATs for 2 minutes at least, but
  many use less. This departs on purpose from RFC 9293 3.8.4 (MUST-24: keep-alives off by
  default), written for kernel TCP whose paths rarely expire; it stays switchable per
  connection (``SO_KEEPALIVE``, ``TCP_KEEPIDLE``...) and per ``Config``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import _congestion

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
        nodelay: disable Nagle's algorithm (RFC 9293 3.7.4) when True. This is a bare
            connection's setting (the core, a bare ``UtcpSocket``); a ``UtcpStream``, like
            ``trio.SocketStream`` on a kernel socket, turns Nagle off when it is made.
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
        connect_timeout: give up an active open after this long (SYNs back off meanwhile);
            30 s, the application's give-up that RFC 9293 3.8.3 (MUST-23) allows (module
            docstring).
        max_retransmissions: consecutive RTO expiries, or zero-window probes the peer leaves
            unanswered, before the connection is timed out (RFC 9293 3.8.3 "R2"; Linux's
            tcp_retries2 is 15 and bounds its window probes too).
        user_timeout: if set, fail the connection when sent data stays unacknowledged this
            long, or data waits this long behind a closed window whose probes go unanswered
            (RFC 9293 3.8.3 USER TIMEOUT, RFC 5482 semantics; Linux's TCP_USER_TIMEOUT); 30 s
            by default (module docstring), None leaves it to ``max_retransmissions``.
        msl: maximum segment lifetime; TIME-WAIT lasts 2 * msl (RFC 9293 3.4.2).
        fin_wait_2_timeout: how long an orphaned connection (closed by the application) waits
            in FIN-WAIT-2 for the peer's FIN (Linux tcp_fin_timeout).
        keepalive, keepalive_idle, keepalive_interval, keepalive_count: RFC 9293 3.8.4 and
            RFC 1122 4.2.3.6. On by default with 20 s idle, 5 s interval and 3 probes, a
            deliberate departure from RFC 9293 MUST-24 for NAT bindings and dead peers
            (module docstring); kernel TCP's values are off, 7200 s, 75 s and 9.
        congestion_control: name of the congestion controller, one of
            ``utcp.available_congestion_controls()``.
        initial_window: initial congestion window in segments (RFC 6928).
        tail_loss_probe: RFC 8985 7 tail loss probes (with SACK): a lost last segment is
            probed for after about 2 SRTT instead of waiting for the RTO (Linux
            tcp_early_retrans).
        pacing: spread each window over the round trip (rate 2x cwnd/SRTT in slow start,
            1.25x after) instead of sending it in one burst.
        challenge_ack_limit: challenge ACKs per second per connection (RFC 5961 7).

    Host-wide limits (docs/HARDENING.md), read from the ``Config`` a ``Host`` is built with,
    except ``syn_cookies``, read from the listener's:
        syn_cookies: answer SYNs with stateless SYN cookies (RFC 4987 3.6) when the
            listener's SYN queue (its backlog of half-open connections) is full or the
            source holds ``max_half_open_per_source`` of them; False drops those SYNs.
            Linux's tcp_syncookies=1.
        max_half_open_per_source: half-open (SYN-RECEIVED) connections one source IP
            address may hold on one listener; its further SYNs get cookies.
        max_connections: connections (any state, TIME-WAIT included) one host holds; past
            it a SYN or cookie ACK is dropped and ``connect`` raises ``OSError(ENOBUFS)``.
        rst_rate_limit / rst_rate_limit_per_source: RSTs per second answering segments for
            no connection (RFC 9293 3.10.7.1), in all and per source IP address (token
            buckets of one second's worth), like BSD's icmplim and Linux's icmp_ratelimit.
        challenge_ack_limit_global: challenge ACKs per second over all connections (RFC
            5961 7), randomised every second as Linux does since CVE-2016-5696: each
            second allows ``limit // 2 + randrange(limit)``, so an off-path observer cannot
            count how many the host has left.
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
    # Dead-peer defaults: see the module docstring and README "Dead peers and timeouts".
    connect_timeout: float = 30.0
    max_retransmissions: int = 15
    user_timeout: float | None = 30.0
    msl: float = 30.0
    fin_wait_2_timeout: float = 60.0
    # RFC 9293 3.8.4 MUST-24 says off by default; on here for NATs (RFC 4787 REQ-5 and
    # the ~30 s bindings met in practice) and for receivers whose peer died.
    keepalive: bool = True
    keepalive_idle: float = 20.0
    keepalive_interval: float = 5.0
    keepalive_count: int = 3
    congestion_control: str = "cubic"
    initial_window: int = 10
    pacing: bool = True
    tail_loss_probe: bool = True
    challenge_ack_limit: int = 100
    syn_cookies: bool = True
    max_half_open_per_source: int = 32
    max_connections: int = 100_000
    rst_rate_limit: int = 200
    rst_rate_limit_per_source: int = 10
    challenge_ack_limit_global: int = 1000

    def __post_init__(self) -> None:
        self._check_types()
        if self.congestion_control.lower() not in _congestion.available():
            raise ValueError(
                f"unknown congestion control {self.congestion_control!r}; "
                f"available: {', '.join(_congestion.available())}"
            )
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
        for name in ("max_half_open_per_source", "max_connections", "challenge_ack_limit_global"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.rst_rate_limit < 0 or self.rst_rate_limit_per_source < 0:
            raise ValueError("rst_rate_limit and rst_rate_limit_per_source must be >= 0")

    def _check_types(self) -> None:
        """Each field against its annotation: bool, int (not bool), float (int accepted),
        str, optionally None."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kinds = str(f.type).replace(" ", "").split("|")
            if value is None and "None" in kinds:
                continue
            kind = kinds[0]
            if kind == "bool":
                ok = isinstance(value, bool)
            elif kind == "int":
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif kind == "float":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                ok = isinstance(value, str)
            if not ok:
                raise TypeError(f"Config.{f.name} must be {f.type}, not {value!r}")

    def replace(self, **changes: object) -> Config:
        """A copy with ``changes`` applied (validated like the original)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def local_mss(self, ipv6: bool) -> int:
        if self.mss is not None:
            return self.mss
        return DEFAULT_MSS_IPV6 if ipv6 else DEFAULT_MSS_IPV4
