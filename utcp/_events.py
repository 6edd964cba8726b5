"""Events the core hands to the I/O layer through ``Connection.next_event()``."""

from __future__ import annotations

from dataclasses import dataclass

from ._state import State


@dataclass(frozen=True, slots=True)
class StateChanged:
    old: State
    new: State


@dataclass(frozen=True, slots=True)
class Established:
    """The handshake completed (client: SYN-SENT -> ESTABLISHED, server: SYN-RECEIVED ->)."""


@dataclass(frozen=True, slots=True)
class DataReceived:
    """New in-order bytes are readable with ``Connection.receive()``."""


@dataclass(frozen=True, slots=True)
class SendSpaceAvailable:
    """Acknowledgements freed space in the send buffer."""


@dataclass(frozen=True, slots=True)
class EOFReceived:
    """The peer's FIN arrived in order: after the buffered bytes, the stream ends."""


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """Reset by the peer, refused, or timed out; ``error`` says which."""

    error: Exception


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection reached CLOSED; it will send nothing more."""


Event = (
    StateChanged
    | Established
    | DataReceived
    | SendSpaceAvailable
    | EOFReceived
    | ConnectionFailed
    | Closed
)
