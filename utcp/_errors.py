"""Error types of utcp and the one place that maps them to trio's stream errors.

The core records *why* a connection failed as a standard exception (ConnectionResetError,
ConnectionRefusedError, TimeoutError); local misuse of the core raises ``UtcpStateError``.
"""

from __future__ import annotations


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
