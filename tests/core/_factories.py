"""Per-state factories for the segment-in / segment-out tests (STYLE.md rule 5).

Each factory drives one ``Connection`` (the "local" end, port 443) by hand into one RFC 9293
state, derived from the previous state's factory, and returns it with its output and events
drained. The "peer" (port 40000) exists only as the segments the factories and tests feed.
Both initial sequence numbers sit just below 2**32, so every exchange wraps around.

Fixed virtual times (seconds) at which each factory leaves its connection:

    syn_received  T_SYN (0.0)   the peer's SYN arrived, our SYN-ACK went out
    established   T_EST (0.5)   the peer ACKed our SYN-ACK one RTT later
    fin_wait_1    T_EST         shutdown(): our FIN went out
    fin_wait_2    T_FW2 (1.0)   the peer ACKed our FIN
    time_wait     T_TW  (1.5)   the peer's FIN arrived, we ACKed it
    close_wait    T_CW  (1.0)   the peer's FIN arrived, we ACKed it
    last_ack      T_CW          shutdown(): our FIN went out
    closing       T_CW          the peer's FIN (not ACKing ours) crossed our FIN
    syn_sent      T_SYN         connect(): our SYN went out

``real_exchange(state)`` reaches the same states between two real connections, so a test can
check that the hand-made TCBs are the ones the protocol itself produces.
"""

from __future__ import annotations

from typing import Any

import pytest

from utcp._config import Config
from utcp._connection import Connection
from utcp._events import Event
from utcp._seq import MASK
from utcp._state import State
from utcp._wire import ACK, FIN, SYN, Segment, decode_untrusted, encode

LOCAL_PORT = 443
REMOTE_PORT = 40000
LOCAL_ISS = 2**32 - 50  # ours: data offset 50 is sequence number 0
REMOTE_ISS = 2**32 - 100  # the peer's (our IRS)

# Our side: a 256 KiB receive buffer needs window scale 3 (65535 << 2 < 2**18).
# Pacing, tail loss probes and quick-ACK mode off: these tables pin down every segment and
# timer RFC 9293 and RFC 6298 prescribe; pacing and RACK-TLP have their own tests
# (test_recovery.py), quick ACKs theirs (test_review_receiver.py).
# Kernel TCP's dead-peer settings (keep-alives off, no user timeout, 75 s connect timeout)
# rather than utcp's defaults: the tables turn each timer on where they test it.
KERNEL_TIMEOUTS: dict[str, Any] = {
    "keepalive": False,
    "user_timeout": None,
    "connect_timeout": 75.0,
}
CONFIG = Config(
    receive_buffer_size=1 << 18,
    delayed_ack=0.125,
    quick_acks=0,
    msl=2.0,
    fin_wait_2_timeout=8.0,
    pacing=False,
    tail_loss_probe=False,
    **KERNEL_TIMEOUTS,
)
LOCAL_MSS = 1452  # WIRE.md, IPv4
LOCAL_WSCALE = 3
LOCAL_WINDOW = (1 << 18) >> LOCAL_WSCALE  # the window field of an empty receive buffer

# The peer: what a utcp peer with PEER_CONFIG puts in its SYN and its ACKs.
PEER_MSS = 1400
PEER_WSCALE = 7
PEER_WINDOW = 65535  # the window field; 65535 << 7 bytes
PEER_CONFIG = Config(
    mss=PEER_MSS,
    receive_buffer_size=65535 << PEER_WSCALE,
    timestamps=False,
    pacing=False,
    tail_loss_probe=False,
    **KERNEL_TIMEOUTS,
)
PEER_TS = 7_000_000  # the peer's timestamp clock at T_SYN in the timestamp variants

T_SYN = 0.0
RTT = 0.5
T_EST = T_SYN + RTT
T_FW2 = T_EST + RTT
T_TW = T_FW2 + RTT
T_CW = T_EST + RTT


def L(offset: int) -> int:
    """Our sequence number at stream offset ``offset`` (0 is our SYN)."""
    return (LOCAL_ISS + offset) & MASK


def R(offset: int) -> int:
    """The peer's sequence number at stream offset ``offset`` (0 is its SYN)."""
    return (REMOTE_ISS + offset) & MASK


def peer_ts(now: float) -> int:
    """The peer's TSval at ``now`` (1 ms ticks)."""
    return (PEER_TS + int(now * 1000)) & MASK


def local_ts(conn: Connection, now: float) -> int:
    """Our TSval at ``now``: 1 ms ticks plus the connection's RFC 7323 7.1 offset."""
    return (int(now * 1000) + conn._ts_offset) & MASK


def peer(
    flags: int,
    seq: int,
    ack: int = 0,
    payload: bytes = b"",
    *,
    window: int = PEER_WINDOW,
    **options: Any,
) -> Segment:
    """A segment from the peer; ``seq`` and ``ack`` are stream offsets (see R and L)."""
    return Segment(
        REMOTE_PORT,
        LOCAL_PORT,
        R(seq),
        L(ack) if flags & ACK else 0,
        flags,
        window,
        payload,
        **options,
    )


def ours(
    flags: int,
    seq: int,
    ack: int,
    payload: bytes = b"",
    *,
    window: int = LOCAL_WINDOW,
    **options: Any,
) -> Segment:
    """The segment we expect the local connection to send; offsets as in ``peer``."""
    return Segment(LOCAL_PORT, REMOTE_PORT, L(seq), R(ack), flags, window, payload, **options)


def peer_syn(*, ts: bool = False, **changes: Any) -> Segment:
    """The SYN a utcp peer with PEER_CONFIG sends (plus timestamps if ``ts``)."""
    options: dict[str, Any] = {
        "mss": PEER_MSS,
        "wscale": PEER_WSCALE,
        "sack_permitted": True,
        "timestamps": (peer_ts(T_SYN), 0) if ts else None,
    }
    options.update(changes)
    return peer(SYN, 0, window=65535, **options)


def drain(conn: Connection) -> list[Event]:
    """Every pending event, in order."""
    events = []
    while (ev := conn.next_event()) is not None:
        events.append(ev)
    return events


def settle(conn: Connection, now: float) -> list[Segment]:
    """Drain output at ``now`` and events; return the output."""
    out = conn.segments_to_send(now)
    drain(conn)
    return out


# ---------------------------------------------------------------------------- factories


def closed(config: Config = CONFIG) -> Connection:
    """A fresh TCB, as the host builds one for a peer (ports known, nothing sent)."""
    return Connection(config, local_port=LOCAL_PORT, remote_port=REMOTE_PORT, iss=LOCAL_ISS)


def listen(config: Config = CONFIG) -> Connection:
    conn = closed(config)
    conn.listen()
    drain(conn)
    return conn


def syn_received(config: Config = CONFIG, *, ts: bool = False, **syn: Any) -> Connection:
    """LISTEN + the peer's SYN at T_SYN; our SYN-ACK went out at T_SYN."""
    conn = listen(config)
    conn.receive_segment(peer_syn(ts=ts, **syn), T_SYN)
    out = settle(conn, T_SYN)
    assert [s.flags for s in out] == [SYN | ACK], out
    assert conn.state is State.SYN_RECEIVED
    return conn


def established(config: Config = CONFIG, *, ts: bool = False, **syn: Any) -> Connection:
    """SYN-RECEIVED + the peer's ACK of our SYN-ACK, one RTT later (T_EST)."""
    conn = syn_received(config, ts=ts, **syn)
    options: dict[str, Any] = {}
    if conn.ts_ok:
        options["timestamps"] = (peer_ts(T_EST - RTT / 2), local_ts(conn, T_SYN))
    window = PEER_WINDOW if syn.get("wscale", PEER_WSCALE) is not None else 65535
    conn.receive_segment(peer(ACK, 1, 1, window=window, **options), T_EST)
    assert settle(conn, T_EST) == []
    assert conn.state is State.ESTABLISHED
    return conn


def fin_wait_1(config: Config = CONFIG, *, ts: bool = False) -> Connection:
    """ESTABLISHED + shutdown() at T_EST: our FIN (offset 1) went out."""
    conn = established(config, ts=ts)
    conn.shutdown(T_EST)
    out = settle(conn, T_EST)
    assert [s.flags for s in out] == [ACK | FIN], out
    assert conn.state is State.FIN_WAIT_1
    return conn


def fin_wait_2(config: Config = CONFIG) -> Connection:
    """FIN-WAIT-1 + the peer's ACK of our FIN at T_FW2."""
    conn = fin_wait_1(config)
    conn.receive_segment(peer(ACK, 1, 2), T_FW2)
    assert settle(conn, T_FW2) == []
    assert conn.state is State.FIN_WAIT_2
    return conn


def time_wait(config: Config = CONFIG) -> Connection:
    """FIN-WAIT-2 + the peer's FIN (offset 1) at T_TW, which we ACKed at once."""
    conn = fin_wait_2(config)
    conn.receive_segment(peer(ACK | FIN, 1, 2), T_TW)
    out = settle(conn, T_TW)
    assert [s.flags for s in out] == [ACK], out
    assert conn.state is State.TIME_WAIT
    return conn


def close_wait(config: Config = CONFIG) -> Connection:
    """ESTABLISHED + the peer's FIN (offset 1) at T_CW, which we ACKed at once."""
    conn = established(config)
    conn.receive_segment(peer(ACK | FIN, 1, 1), T_CW)
    out = settle(conn, T_CW)
    assert [s.flags for s in out] == [ACK], out
    assert conn.state is State.CLOSE_WAIT
    return conn


def last_ack(config: Config = CONFIG) -> Connection:
    """CLOSE-WAIT + shutdown() at T_CW: our FIN (offset 1) went out."""
    conn = close_wait(config)
    conn.shutdown(T_CW)
    out = settle(conn, T_CW)
    assert [s.flags for s in out] == [ACK | FIN], out
    assert conn.state is State.LAST_ACK
    return conn


def closing(config: Config = CONFIG) -> Connection:
    """FIN-WAIT-1 + the peer's FIN at T_CW, sent before ours reached it (ACK = 1)."""
    conn = fin_wait_1(config)
    conn.receive_segment(peer(ACK | FIN, 1, 1), T_CW)
    out = settle(conn, T_CW)
    assert [s.flags for s in out] == [ACK], out
    assert conn.state is State.CLOSING
    return conn


def syn_sent(config: Config = CONFIG) -> Connection:
    """CLOSED + connect() at T_SYN: our SYN went out."""
    conn = closed(config)
    conn.connect(T_SYN)
    out = settle(conn, T_SYN)
    assert [s.flags for s in out] == [SYN], out
    assert conn.state is State.SYN_SENT
    return conn


FACTORIES = {
    State.CLOSED: closed,
    State.LISTEN: listen,
    State.SYN_SENT: syn_sent,
    State.SYN_RECEIVED: syn_received,
    State.ESTABLISHED: established,
    State.FIN_WAIT_1: fin_wait_1,
    State.FIN_WAIT_2: fin_wait_2,
    State.CLOSE_WAIT: close_wait,
    State.CLOSING: closing,
    State.LAST_ACK: last_ack,
    State.TIME_WAIT: time_wait,
}


# ---------------------------------------------------------------------------- real exchange


def remote() -> Connection:
    """A real peer connection with PEER_CONFIG and ISN REMOTE_ISS."""
    return Connection(PEER_CONFIG, local_port=REMOTE_PORT, remote_port=LOCAL_PORT, iss=REMOTE_ISS)


def deliver(src: Connection, dst: Connection, sent: float, arrives: float) -> list[Segment]:
    """Everything ``src`` sends at ``sent``, through the codec, into ``dst`` at ``arrives``."""
    out = src.segments_to_send(sent)
    for seg in out:
        dst.receive_segment(decode_untrusted(encode(seg)), arrives)
    return out


def real_exchange(state: State) -> tuple[Connection, Connection]:
    """(local, peer) after real segments took the local end to ``state``, on the factories'
    timeline. The peer's output still in flight is left unsent."""
    local, rem = closed(), remote()
    half = RTT / 2
    if state is State.CLOSED:
        return local, rem
    if state is State.SYN_SENT:
        local.connect(T_SYN)
        local.segments_to_send(T_SYN)  # the SYN, still on its way
        return local, rem
    local.listen()
    if state is State.LISTEN:
        return local, rem
    rem.connect(T_SYN - half)
    deliver(rem, local, T_SYN - half, T_SYN)
    deliver(local, rem, T_SYN, T_SYN + half)
    if state is State.SYN_RECEIVED:
        return local, rem
    deliver(rem, local, T_EST - half, T_EST)
    local.segments_to_send(T_EST)
    if state is State.ESTABLISHED:
        return local, rem
    if state in (State.FIN_WAIT_1, State.FIN_WAIT_2, State.TIME_WAIT, State.CLOSING):
        local.shutdown(T_EST)
        fin = local.segments_to_send(T_EST)
        if state is State.FIN_WAIT_1:
            return local, rem
        if state is State.CLOSING:
            rem.shutdown(T_CW - half)  # the peer closes before our FIN reaches it
            deliver(rem, local, T_CW - half, T_CW)
            local.segments_to_send(T_CW)
            return local, rem
        for seg in fin:
            rem.receive_segment(decode_untrusted(encode(seg)), T_EST + half)
        deliver(rem, local, T_FW2 - half, T_FW2)
        if state is State.FIN_WAIT_2:
            return local, rem
        rem.shutdown(T_TW - half)
        deliver(rem, local, T_TW - half, T_TW)
        local.segments_to_send(T_TW)
        return local, rem
    rem.shutdown(T_CW - half)
    deliver(rem, local, T_CW - half, T_CW)
    local.segments_to_send(T_CW)
    if state is State.CLOSE_WAIT:
        return local, rem
    assert state is State.LAST_ACK
    local.shutdown(T_CW)
    local.segments_to_send(T_CW)
    return local, rem


def tcb(conn: Connection) -> dict[str, object]:
    """The parts of a TCB that the factories and real segments must agree on."""
    return {
        "state": conn.state,
        "iss": conn.iss,
        "irs": conn.irs,
        "snd_una": conn.snd_una,
        "snd_nxt": conn.snd_nxt,
        "snd_wnd": conn.snd_wnd,
        "max_snd_wnd": conn.max_snd_wnd,
        "rcv_nxt": conn.rcv_nxt,
        "rcv_wnd": conn.rcv_wnd,
        "local_mss": conn.local_mss,
        "peer_mss": conn.peer_mss,
        "effective_mss": conn.effective_mss,
        "snd_wscale": conn.snd_wscale,
        "rcv_wscale": conn.rcv_wscale,
        "sack_ok": conn.sack_ok,
        "ts_ok": conn.ts_ok,
        "remote_port": conn.remote_port,
        "rto": conn.rtt.current_rto(),
        "srtt": conn.rtt.srtt,
        "cwnd": conn.cc.cwnd,
        "next_timer": conn.next_timer(),
        "readable": conn.readable,
        "send_space": conn.send_space,
        "in_flight": conn.bytes_in_flight,
        "at_eof": conn.at_eof,
        "error": conn.error,
    }


def route_method(monkeypatch: pytest.MonkeyPatch, obj: object, name: str, to: Any) -> None:
    """Send calls of ``obj.<name>`` to ``to`` for the rest of the test. Objects with
    ``__slots__`` (connections, congestion controllers) take no per-instance attributes,
    so the method is patched on the class and routes only ``obj``'s calls; ``to`` may call
    the original through a bound method taken before this."""
    cls = type(obj)
    original = getattr(cls, name)

    def routed(self: object, *args: Any, **kwargs: Any) -> Any:
        if self is obj:
            return to(*args, **kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, routed)
