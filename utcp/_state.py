"""The eleven RFC 9293 connection states (RFC 9293 3.3.2)."""

from __future__ import annotations

import enum


class State(enum.Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"

    def __str__(self) -> str:
        return self.value

    # Members are singletons, so identity is equality: hash them by identity at C speed
    # (Enum.__hash__ hashes the name in Python, and the hot path tests membership in the
    # frozensets below several times per segment).
    __hash__ = object.__hash__


# RFC 9293 3.3.2: the states after the handshake, where sequence numbers are synchronized.
SYNCHRONIZED = frozenset(
    {
        State.ESTABLISHED,
        State.FIN_WAIT_1,
        State.FIN_WAIT_2,
        State.CLOSE_WAIT,
        State.CLOSING,
        State.LAST_ACK,
        State.TIME_WAIT,
    }
)
# States in which we may still send data (our FIN not yet queued).
CAN_SEND = frozenset({State.ESTABLISHED, State.CLOSE_WAIT})
# RFC 9293 3.10.2: SEND is accepted (queued until ESTABLISHED) before the handshake ends.
CAN_QUEUE = frozenset({State.SYN_SENT, State.SYN_RECEIVED, *CAN_SEND})
# States in which the peer may still send us data (its FIN not yet received).
CAN_RECEIVE = frozenset({State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2})
# States that send data segments (ours may still be queued or in flight).
CAN_OUTPUT_DATA = frozenset(
    {State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1, State.LAST_ACK, State.CLOSING}
)
# Our FIN is queued and may still have to be sent (CLOSING too: the peer's FIN may arrive
# while ours still waits behind queued data).
SENDING_FIN = frozenset({State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK})
# The handshake is under way: our SYN (or SYN-ACK) is sent and retransmitted.
HANDSHAKING = frozenset({State.SYN_SENT, State.SYN_RECEIVED})
# Keep-alives are sent (RFC 9293 3.8.4): synchronized, and not merely waiting out 2 MSL.
KEEPALIVE_STATES = SYNCHRONIZED - {State.TIME_WAIT}
# No SYN of ours has been answered yet: options we announce in it may still change.
BEFORE_SYN = frozenset({State.CLOSED, State.LISTEN, State.SYN_SENT})
# RFC 9293 3.10.5 ABORT: the peer holds state for the connection, so it gets a RST.
RST_ON_ABORT = frozenset(
    {
        State.SYN_RECEIVED,
        State.ESTABLISHED,
        State.FIN_WAIT_1,
        State.FIN_WAIT_2,
        State.CLOSE_WAIT,
    }
)
# RFC 9293 3.10.7.4 second: a RST here closes without reporting an error (we were done).
CLOSE_QUIETLY_ON_RST = frozenset({State.CLOSING, State.LAST_ACK, State.TIME_WAIT})

# RFC 9293 3.3.2 figure 5: the state diagram's transitions, plus the edge to CLOSED from every
# state (ABORT, a RST, a timeout). A passive connection reset in SYN-RECEIVED goes to
# CLOSED, not back to LISTEN: the listener lives on in the host.
TRANSITIONS = frozenset(
    {
        (State.CLOSED, State.LISTEN),
        (State.CLOSED, State.SYN_SENT),
        (State.LISTEN, State.SYN_RECEIVED),
        (State.LISTEN, State.SYN_SENT),
        (State.SYN_SENT, State.SYN_RECEIVED),
        (State.SYN_SENT, State.ESTABLISHED),
        (State.SYN_RECEIVED, State.ESTABLISHED),
        (State.SYN_RECEIVED, State.FIN_WAIT_1),
        (State.SYN_RECEIVED, State.LISTEN),
        (State.ESTABLISHED, State.FIN_WAIT_1),
        (State.ESTABLISHED, State.CLOSE_WAIT),
        (State.FIN_WAIT_1, State.FIN_WAIT_2),
        (State.FIN_WAIT_1, State.CLOSING),
        (State.FIN_WAIT_1, State.TIME_WAIT),
        (State.FIN_WAIT_2, State.TIME_WAIT),
        (State.CLOSE_WAIT, State.LAST_ACK),
        (State.CLOSING, State.TIME_WAIT),
        *((old, State.CLOSED) for old in State if old is not State.CLOSED),
    }
)
