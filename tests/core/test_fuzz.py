"""Hypothesis fuzzing of one core in every RFC 9293 state (STYLE.md rule 8).

Each example starts from a per-state factory and runs a random program of steps: decoded
segments with random flags, sequence and acknowledgment numbers near and far from the windows
and random options; the same as datagrams, mutated (flipped bytes, truncation, a zeroed
checksum, random option bytes) or replaced by random bytes; timers fired at increasing
times; output drained; application reads, writes and closes. After every step the TCB's
invariants must hold, and nothing may raise.

Payload bytes are a function of their sequence number (``stream_bytes``), so whatever the
peer's ISN turned out to be, the bytes ``receive()`` hands out must be exactly
``stream_bytes(IRS + 1, n)``: never duplicated, skipped or reordered. A datagram whose
mutation slipped a foreign payload past the decoder turns that check off for the example.
"""

from __future__ import annotations

import itertools
import math
import random
import struct
from dataclasses import dataclass, field
from typing import Any

import pytest
from _factories import (
    CONFIG,
    FACTORIES,
    LOCAL_PORT,
    REMOTE_ISS,
    REMOTE_PORT,
    T_CW,
    T_TW,
    established,
    fin_wait_1,
    syn_received,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utcp._connection import Connection
from utcp._errors import UtcpStateError
from utcp._events import StateChanged
from utcp._seq import MASK
from utcp._state import SYNCHRONIZED, TRANSITIONS, State
from utcp._wire import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    DecodeError,
    Segment,
    decode_untrusted,
    encode,
)

CONFIGS = {
    "default": CONFIG,
    # Window scale 0, a window a few segments wide, short timers.
    "small": CONFIG.replace(
        receive_buffer_size=6000,
        send_buffer_size=20_000,
        msl=1.0,
        fin_wait_2_timeout=3.0,
        connect_timeout=20.0,
        max_retransmissions=4,
        challenge_ack_limit=5,
    ),
    "timers": CONFIG.replace(
        keepalive=True,
        keepalive_idle=2.0,
        keepalive_interval=0.5,
        keepalive_count=2,
        user_timeout=6.0,
        delayed_ack=0.0,
        nodelay=True,
        sack=False,
    ),
}
TS_FACTORIES = {State.SYN_RECEIVED: syn_received, State.ESTABLISHED: established}
START = {State.TIME_WAIT: T_TW, State.CLOSE_WAIT: T_CW, State.LAST_ACK: T_CW}


_PERIOD = 65521  # prime: no shift of the stream by fewer bytes matches it
_TABLE = random.Random(9293).randbytes(_PERIOD) * 2


def stream_bytes(seq: int, n: int) -> bytes:
    """The ``n`` bytes the peer puts from sequence number ``seq`` on: byte ``s`` of the
    sequence space is ``_TABLE[s % _PERIOD]``, across the 2**32 wrap too."""
    out = bytearray()
    while n > 0:
        chunk = min(n, (1 << 32) - seq, _PERIOD)
        i = seq % _PERIOD
        out += _TABLE[i : i + chunk]
        n -= chunk
        seq = (seq + chunk) & MASK
    return bytes(out)


def payload_consistent(seg: Segment) -> bool:
    start = (seg.seq + (1 if seg.flags & SYN else 0)) & MASK
    return bytes(seg.payload) == stream_bytes(start, len(seg.payload))


@dataclass
class Run:
    """One fuzzed connection, what the application did with it, and the checks."""

    conn: Connection
    now: float
    stream_checked: bool = True
    received: bytearray = field(default_factory=bytearray)
    sent: bytearray = field(default_factory=bytearray)
    irs: int | None = None
    was_open: bool = False
    state: State | None = None

    def check_transitions(self) -> None:
        """Every state change the core reports is an RFC 9293 3.3.2 edge, in sequence."""
        conn = self.conn
        if self.state is None:
            self.state = conn.state
        while (ev := conn.next_event()) is not None:
            if isinstance(ev, StateChanged):
                assert ev.old is self.state, (ev, self.state)
                assert (ev.old, ev.new) in TRANSITIONS, ev
                self.state = ev.new
        assert self.state is conn.state

    def note_input(self, data: bytes) -> None:
        """Turn the stream check off if ``data`` decodes to a payload not from the stream."""
        try:
            seg = decode_untrusted(data)
        except DecodeError:
            return
        if seg.payload and not payload_consistent(seg):
            self.stream_checked = False

    def check(self) -> None:
        conn = self.conn
        assert isinstance(conn.state, State)
        self.check_transitions()
        assert conn._snd_una <= conn._snd_nxt
        assert conn._snd_una >= 0
        # The scoreboard's tallies are non-negative and match a recount.
        sb = conn.scoreboard
        segs = list(sb)  # type: ignore[call-overload]
        assert min(sb.pipe, sb.sacked_bytes, sb.lost_bytes) >= 0
        assert sb.pipe == sum(s.end - s.start for s in segs if not s.sacked and not s.lost)
        assert sb.sacked_bytes == sum(s.end - s.start for s in segs if s.sacked)
        assert sb.lost_bytes == sum(s.end - s.start for s in segs if s.lost)
        assert not any(s.sacked and s.lost for s in segs)
        for a, b in itertools.pairwise(segs):
            assert a.start < a.end <= b.start < b.end
        if segs:
            assert conn._snd_una <= segs[0].start and segs[-1].end <= conn._snd_nxt
        # The receive buffer never holds more than the advertised window allows.
        rb = conn.rcvbuf
        bound = conn.config.receive_buffer_size + (1 << conn.rcv_wscale)
        assert len(rb.ready) + rb.ooo_bytes <= bound
        assert rb.ooo_bytes >= 0 and conn.rcv_wnd >= 0
        timer = conn.next_timer()
        assert timer is None or (isinstance(timer, float) and math.isfinite(timer))
        if conn.state is not State.CLOSED:
            self.was_open = True
        elif self.was_open:
            assert timer is None
        # The peer's ISN never changes once data from it has been delivered.
        if self.received:
            assert self.irs == conn.irs
        if self.stream_checked and self.received:
            assert bytes(self.received) == stream_bytes((conn.irs + 1) & MASK, len(self.received))
        if conn.state in SYNCHRONIZED:
            # Every byte we acknowledged (RCV.NXT past the SYN) was read or is still readable.
            assert len(self.received) + conn.readable == conn.rcvbuf.nxt - 1

    def read(self, n: int) -> None:
        if not self.received:
            self.irs = self.conn.irs
        self.received += self.conn.receive(n)

    def flush(self) -> None:
        conn = self.conn
        for seg in conn.segments_to_send(self.now):
            data = encode(seg)
            assert decode_untrusted(data) == seg
            assert (seg.src_port, seg.dst_port) == (conn.local_port, conn.remote_port) or (
                seg.flags & RST
            )
            if seg.payload and not seg.flags & SYN:
                # Our own bytes go out at their offsets: off 1 is the first byte sent.
                off = (seg.seq - conn.iss) & MASK
                assert bytes(seg.payload) == bytes(self.sent[off - 1 : off - 1 + len(seg.payload)])


# ------------------------------------------------------------------------------ strategies

COMMON_FLAGS = [ACK, ACK | PSH, ACK | FIN, ACK | FIN | PSH, SYN, SYN | ACK, RST, RST | ACK, 0]


@st.composite
def segments(draw: st.DrawFn, conn: Connection) -> Segment:
    """A segment that encodes, aimed near (or far from) the connection's windows."""
    flags = draw(st.one_of(st.sampled_from(COMMON_FLAGS), st.integers(0, 255)))
    irs = conn.irs if conn.state not in (State.CLOSED, State.LISTEN, State.SYN_SENT) else None
    rcv_nxt = conn.rcv_nxt if irs is not None else (REMOTE_ISS + 1) & MASK
    window_span = max(conn.rcv_wnd, 1)
    seq = draw(
        st.one_of(
            st.integers(-3000, 3000).map(lambda d: rcv_nxt + d),
            st.integers(-2, 2).map(lambda d: rcv_nxt + window_span + d),
            st.integers(0, MASK),
        )
    )
    snd_una, snd_nxt = conn.snd_una, conn.snd_nxt
    ack = draw(
        st.one_of(
            st.integers(-2, 2).map(lambda d: snd_nxt + d),
            st.integers(-3000, 3000).map(lambda d: snd_una + d),
            st.integers(0, MASK),
        )
    )
    seq &= MASK
    ack = ack & MASK if flags & ACK else draw(st.sampled_from([0, ack & MASK]))
    size = draw(st.one_of(st.just(0), st.integers(1, 64), st.integers(1, 2000)))
    start = (seq + (1 if flags & SYN else 0)) & MASK
    payload = stream_bytes(start, size)
    options: dict[str, Any] = {}
    ts = draw(
        st.one_of(
            st.none(),
            st.tuples(
                st.integers(-5, 5).map(lambda d: (conn.ts_recent + d) & MASK),
                st.integers(0, MASK),
            ),
            st.tuples(st.integers(0, MASK), st.integers(0, MASK)),
        )
    )
    options["timestamps"] = ts
    if flags & SYN:
        options["mss"] = draw(st.one_of(st.none(), st.integers(0, 0xFFFF)))
        options["wscale"] = draw(st.one_of(st.none(), st.integers(0, 14)))
        options["sack_permitted"] = draw(st.booleans())
    else:
        count = draw(st.integers(0, 3 if ts is not None else 4))
        base = st.integers(-4000, 4000).map(lambda d: (snd_una + d) & MASK)
        blocks = draw(st.lists(st.tuples(base, base), min_size=count, max_size=count))
        options["sack_blocks"] = tuple(blocks)
    window = draw(st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 1, 65535])))
    return Segment(REMOTE_PORT, LOCAL_PORT, seq, ack, flags, window, payload, **options)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with flipped bytes, truncated, its checksum zeroed, or all of those."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(buf) - 1))
        buf[i] ^= draw(st.integers(1, 255))
    if draw(st.booleans()):
        buf[16:18] = b"\0\0"  # "not computed": the mutation reaches the parser and the core
    if draw(st.booleans()):
        del buf[draw(st.integers(0, len(buf))) :]
    return bytes(buf)


@st.composite
def raw_options(draw: st.DrawFn, conn: Connection) -> bytes:
    """A header with random option bytes (any kinds, any lengths) and a zero checksum."""
    opts = draw(st.binary(min_size=0, max_size=40))
    opts += b"\0" * (-len(opts) % 4)
    flags = draw(st.sampled_from(COMMON_FLAGS))
    seq = (conn.rcv_nxt + draw(st.integers(-10, 10))) & MASK
    payload = stream_bytes((seq + (1 if flags & SYN else 0)) & MASK, draw(st.integers(0, 40)))
    head = struct.pack(
        "!HHIIBBHHH",
        REMOTE_PORT,
        LOCAL_PORT,
        seq,
        conn.snd_nxt,
        (5 + len(opts) // 4) << 4,
        flags,
        draw(st.integers(0, 0xFFFF)),
        0,
        0,
    )
    return head + opts + payload


ACTIONS = [
    "segment",
    "segment",
    "segment",
    "datagram",
    "mutated",
    "raw",
    "options",
    "timer",
    "timer",
    "advance",
    "flush",
    "flush",
    "read",
    "send",
    "shutdown",
    "close",
    "urg",
]


def start(state: State, config_name: str, ts: bool) -> Run:
    config = CONFIGS[config_name]
    if ts and state in TS_FACTORIES:
        conn = TS_FACTORIES[state](config, ts=True)
    elif ts and state is State.FIN_WAIT_1:
        conn = fin_wait_1(config, ts=True)
    else:
        conn = FACTORIES[state](config)
    return Run(conn, START.get(state, 1.0))


def feed(conn: Connection, wire: bytes, now: float) -> None:
    """A datagram as the host hands it on: decoded, or dropped when malformed."""
    try:
        seg = decode_untrusted(wire)
    except DecodeError:
        return
    conn.receive_segment(seg, now)


def step(run: Run, action: str, data: st.DataObject) -> None:
    conn = run.conn
    if action in ("segment", "datagram", "urg"):
        seg = data.draw(segments(conn), label="segment")
        if action == "urg":
            seg.flags |= URG
            seg.urgent = data.draw(st.integers(0, 0xFFFF), label="urgent")
        wire = encode(seg)
        if action == "datagram":
            feed(conn, wire, run.now)
        else:
            conn.receive_segment(decode_untrusted(wire), run.now)
    elif action == "mutated":
        seg = data.draw(segments(conn), label="segment")
        wire = data.draw(mutated(encode(seg)), label="mutated")
        run.note_input(wire)
        feed(conn, wire, run.now)
    elif action == "raw":
        wire = data.draw(st.binary(max_size=80), label="raw")
        run.note_input(wire)
        feed(conn, wire, run.now)
    elif action == "options":
        wire = data.draw(raw_options(conn), label="options")
        run.note_input(wire)
        feed(conn, wire, run.now)
    elif action == "timer":
        deadline = conn.next_timer()
        if deadline is not None and data.draw(st.booleans(), label="to deadline"):
            run.now = max(run.now, deadline)
        else:
            run.now += data.draw(st.floats(0.0, 3.0), label="dt")
        conn.handle_timer(run.now)
    elif action == "advance":
        run.now += data.draw(st.sampled_from([0.001, 0.04, 0.2, 1.0, 7.5]), label="dt")
    elif action == "flush":
        run.flush()
    elif action == "read":
        run.read(data.draw(st.integers(1, 5000), label="read"))
    elif action == "send":
        n = data.draw(st.integers(1, 6000), label="send")
        chunk = bytes((len(run.sent) + i) % 251 for i in range(n))
        try:
            taken = conn.send(chunk)
        except UtcpStateError:
            return
        run.sent += chunk[:taken]
    elif action == "shutdown":
        conn.shutdown(run.now)
    elif action == "close":
        if data.draw(st.booleans(), label="abort"):
            conn.abort(run.now)
        else:
            conn.close(run.now)


@pytest.mark.parametrize("state", list(FACTORIES), ids=str)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_core_survives_anything(state: State, data: st.DataObject) -> None:
    config_name = data.draw(st.sampled_from(sorted(CONFIGS)), label="config")
    run = start(state, config_name, data.draw(st.booleans(), label="ts"))
    run.check()
    for _ in range(data.draw(st.integers(1, 30), label="steps")):
        action = data.draw(st.sampled_from(ACTIONS), label="action")
        step(run, action, data)
        run.check()
    run.flush()
    run.read(1 << 20)
    run.check()
