"""Error types of utcp and the one place that maps them to trio's stream errors.

The core records *why* a connection failed as a standard exception (ConnectionResetError,
ConnectionRefusedError, TimeoutError); local misuse of the core raises ``UtcpStateError``.
"""

from __future__ import annotations

from dataclasses import dataclass


class UtcpError(Exception):
    """Base class of utcp's own exceptions."""


class UtcpStateError(UtcpError, RuntimeError):
    """A local call that the connection's state does not allow (e.g. send after shutdown)."""


class UtcpInternalError(UtcpError, AssertionError):
    """utcp broke one of its own invariants (e.g. a state change RFC 9293 does not have)."""


class ConnectionTimedOut(TimeoutError):
    """The connection was given up: connect timeout, retransmission limit, user timeout or
    unanswered keepalives. ``reason`` names which."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"connection timed out ({reason})")
        self.reason = reason


# Where the kernel says an error came from (linux/errqueue.h SO_EE_ORIGIN_*).
ORIGIN_NONE = 0
ORIGIN_LOCAL = 1
ORIGIN_ICMP = 2
ORIGIN_ICMP6 = 3


@dataclass(frozen=True, slots=True)
class KernelError:
    """One error the kernel reported about a datagram we sent (sans-IO: plain values).

    Filled from the socket's error queue (Linux ``IP_RECVERR``: an ICMP error or a local
    one) or from a ``sendto`` that failed. ``destination`` is the UDP address the datagram
    was sent to; ``quoted`` is as much of that datagram (our TCP segment) as the error
    carries back, or None; ``icmp_type``/``icmp_code`` are 0 unless ``origin`` is ICMP;
    ``info`` is the kernel's ``ee_info`` (the next-hop MTU of a "fragmentation needed");
    ``offender`` the address of the router or host that sent the ICMP error, if known.
    """

    destination: tuple[str, int]
    errno: int
    origin: int = ORIGIN_NONE
    icmp_type: int = 0
    icmp_code: int = 0
    quoted: bytes | None = None
    info: int = 0
    offender: str | None = None
