"""The RFC 9293 state machine of one utcp connection, without any I/O.

Reading list, in the order this module leans on them:
- RFC 9293 (TCP): 3.3.2 states, 3.4 sequence numbers, 3.7 segmentation and Nagle, 3.8
  timeouts, keep-alives and windows, 3.10 event processing (the order of checks below).
- RFC 6298 (retransmission timer), RFC 5681 / RFC 6582 / RFC 6675 (congestion control,
  fast retransmit, SACK-based recovery), RFC 2018 (SACK), RFC 7323 (window scale,
  timestamps, PAWS), RFC 5961 (blind in-window attacks: challenge ACKs), RFC 6528 (ISNs),
  RFC 1122 4.2 (host requirements: delayed ACK, keep-alives, closing with unread data).

Theory of operation. A ``Connection`` is a pure function of its inputs and ``now``:
``receive_segment`` feeds peer segments (decoded by the host), ``connect``/``listen``/
``send``/``receive``/``shutdown``/``close``/``abort`` are the application calls and
``handle_timer`` fires due timers. Nothing is sent from those calls: they only update the
transmission control block (TCB) and set flags. ``datagrams_to_send(now)`` (or
``segments_to_send``) then decides what goes on the wire: SYNs, retransmissions, new data
within the peer's window and the congestion window, FIN, probes and ACKs, coalescing one ACK
per batch of input. ``next_timer()`` tells the I/O layer when to call ``handle_timer`` and
``next_event()`` hands out what the application must hear about.

Sequence numbers are 32-bit on the wire, but inside the TCB both directions are tracked as
unwrapped 64-bit offsets (offset 0 is the SYN, data starts at offset 1) and converted at the
edges, so buffers, the scoreboard and comparisons never deal with wrap-around.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

from . import _congestion, _fastopen, _fastpath, _output, _timers
from ._buffers import BLOCK_OVERHEAD, ReceiveBuffer, SendBuffer
from ._config import DEFAULT_PEER_MSS, Config
from ._errors import ConnectionTimedOut, UtcpInternalError, UtcpStateError
from ._events import (
    Closed,
    ConnectionFailed,
    DataReceived,
    EOFReceived,
    Established,
    Event,
    SendSpaceAvailable,
    StateChanged,
)
from ._handshake import late_final_ack
from ._kernel_errors import ERROR_TEXT, kernel_error
from ._limits import challenge_ack
from ._loss_recovery import LossRecovery
from ._rack import Rack
from ._recovery import Scoreboard, SentSegment
from ._rtt import RttEstimator
from ._seq import MASK, rfc6528_isn, seq_diff
from ._state import (
    BEFORE_SYN,
    CAN_QUEUE,
    CAN_RECEIVE,
    CLOSE_QUIETLY_ON_RST,
    HANDSHAKING,
    RST_ON_ABORT,
    SENDING_FIN,
    SYNCHRONIZED,
    TRANSITIONS,
    State,
)
from ._stats import ConnectionStats
from ._wire import (
    ACK,
    FIN,
    MAX_WSCALE,
    PSH,
    RST,
    SYN,
    Segment,
    encode,
    reset_for,
)

log = logging.getLogger("utcp.core")

# RFC 9293 3.8.3 (MUST-23): R2 for a SYN segment lets it be retransmitted for at least 3
# minutes. A passive half-open connection retransmits its SYN-ACK this long (Linux stops
# after tcp_synack_retries, 5, about 63 s); an active open retransmits its SYN until the
# application's Config.connect_timeout, which MUST-23 lets the application choose.
SYN_R2 = 180.0
# RFC 6298 (5.7): RTO after a lost SYN, once data transmission begins.
RTO_AFTER_SYN_LOSS = 3.0
# RFC 7323 5.5: TS.Recent is invalid after 24 days of idleness.
PAWS_IDLE_LIMIT = 24 * 24 * 3600.0
# RFC 7323 4.1 / 5.4: timestamp clock of 1 ms per tick.
TS_HZ = 1000
STRETCH_ACK_LIMIT = 65536  # most bytes one ACK covers in a batch (as Linux's 64 KiB GRO)


class Connection:
    """One TCP connection's state machine. See the module docstring for how to drive it."""

    # Per-connection state, one slot each: a server holds tens of thousands of these (a
    # __dict__ per connection cost about 3 kB of it; bench/README.md, "Scale").
    __slots__ = (
        "_ack_now",
        "_ack_split",
        "_challenge_count",
        "_challenge_window_start",
        "_conn_id",
        "_connect_deadline",
        "_delack_deadline",
        "_dsack",
        "_events",
        "_fin_offset",
        "_fin_queued",
        "_fin_received",
        "_finwait2_deadline",
        "_force_send",
        "_full_arrival",
        "_full_gap",
        "_ipv6",
        "_isn_key",
        "_iss_override",
        "_keepalive_deadline",
        "_keepalive_probes",
        "_last_ack_sent",
        "_last_data_time",
        "_last_keepalive_time",
        "_last_recv_time",
        "_last_rto_time",
        "_offer_wscale",
        "_out",
        "_passive",
        "_pending_levels",
        "_persist_backoff",
        "_persist_deadline",
        "_pingpong",
        "_probes_out",
        "_probes_since",
        "_quick_acks",
        "_rcv_adv",
        "_rcv_wnd_capacity",
        "_rto_answered",
        "_rto_deadline",
        "_rto_retries",
        "_snd_nxt",
        "_snd_una",
        "_snd_wl1",
        "_snd_wl2",
        "_soft_error_first",
        "_soft_error_time",
        "_syn_due",
        "_syn_retries",
        "_syn_sends",
        "_syn_sent_at",
        "_syn_time",
        "_timewait_deadline",
        "_ts_offset",
        "_ts_recent_time",
        "_unacked_full_segments",
        "_unacked_since",
        "_unreachable_count",
        "_unreachable_first",
        "_unreachable_span",
        "challenge_gate",
        "config",
        "effective_mss",
        "error",
        "fastopen",
        "irs",
        "iss",
        "keepalive",
        "keepalive_count",
        "keepalive_idle",
        "keepalive_interval",
        "local_mss",
        "local_port",
        "max_snd_wnd",
        "nodelay",
        "orphaned",
        "peer_mss",
        "rcv_wscale",
        "rcvbuf",
        "recovery",
        "remote_address",
        "remote_port",
        "sack_ok",
        "snd_wnd",
        "snd_wscale",
        "sndbuf",
        "soft_error",
        "state",
        "stats",
        "ts_ok",
        "ts_recent",
        "user_timeout",
    )

    def __init__(
        self,
        config: Config,
        *,
        local_port: int,
        remote_port: int = 0,
        isn_key: bytes = b"\0" * 16,
        conn_id: bytes = b"",
        ipv6: bool = False,
        iss: int | None = None,
    ) -> None:
        """``isn_key`` and ``conn_id`` (the connection's identity, e.g. both addresses) feed
        the RFC 6528 ISN; ``iss`` overrides it (tests put ISNs near 2**32)."""
        self.config = config
        self.local_port = local_port
        self.remote_port = remote_port
        self._isn_key = isn_key
        self._conn_id = conn_id
        self._iss_override = iss
        self.fastopen: _fastopen.FastOpenSession | None = None  # set by the host (RFC 7413)
        self.state = State.CLOSED
        self.remote_address: tuple[str, int] | None = None  # set by the host that demuxes
        self.error: Exception | None = None
        self.stats = ConnectionStats()
        self.nodelay = config.nodelay
        self.keepalive = config.keepalive
        self.keepalive_idle = config.keepalive_idle
        self.keepalive_interval = config.keepalive_interval
        self.keepalive_count = config.keepalive_count
        self.user_timeout = config.user_timeout
        # A list, not a deque (768 bytes empty): it holds a few events at most (level events
        # once each, state changes bounded by the state machine).
        self._events: list[Event] = []
        # DataReceived and SendSpaceAvailable queued once each (a list: two kinds at most).
        self._pending_levels: list[type[Event]] = []
        self._out: list[Segment] = []  # control segments queued by input processing

        # -- send side (RFC 9293 3.3.1 names; offsets, see module docstring) --
        self.iss = 0
        self._snd_una = 0
        self._snd_nxt = 0
        self.snd_wnd = 0
        self.max_snd_wnd = 0
        self._snd_wl1 = 0  # offsets of the segment/ack that last updated the window
        self._snd_wl2 = 0
        self.sndbuf = SendBuffer(config.send_buffer_size)
        self._fin_queued = False
        self._fin_offset: int | None = None
        self._syn_due = False
        self._syn_retries = 0  # timer retransmissions of our SYN (or SYN-ACK)
        self._syn_sends = 0  # transmissions of it, for any reason

        # -- receive side --
        self.irs = 0
        self.rcvbuf = ReceiveBuffer()
        self._rcv_adv = 1  # right edge of the window we last advertised (offset)
        self._rcv_wnd_capacity = config.receive_buffer_size
        self._fin_received = False
        self._ack_now = False
        self._delack_deadline: float | None = None
        self._unacked_full_segments = 0
        self._full_arrival: float | None = None  # when the last full-sized segment arrived
        self._full_gap = 0.0  # smoothed gap between full-sized segments (gain 1/8)
        self._last_ack_sent = 0  # offset we last acknowledged (RFC 7323 Last.ACK.sent)
        self._dsack: tuple[int, int] | None = None  # RFC 2883: a duplicate to report
        self._quick_acks = 0  # data segments still to acknowledge at once (quick-ACK mode)
        self._last_data_time: float | None = None  # when data last arrived
        self._pingpong = False  # we answer data with data: our replies carry the ACKs
        self._ack_split = False  # the ACK owed now must leave before more data is processed

        # -- options (RFC 9293 3.7.1, RFC 7323, RFC 2018) --
        self._ipv6 = ipv6
        self.local_mss = config.local_mss(ipv6)
        self.peer_mss = DEFAULT_PEER_MSS
        self.rcv_wscale = 0
        self.snd_wscale = 0
        self._offer_wscale = self._choose_wscale() if config.window_scaling else None
        self.sack_ok = False
        self.ts_ok = False
        self._mss_changed()
        self.ts_recent = 0
        self._ts_recent_time = 0.0
        self._ts_offset = 0

        # -- timers, estimators, loss recovery and congestion control --
        self.recovery = LossRecovery(config, mss=self.local_mss, stats=self.stats)
        self._rto_deadline: float | None = None
        self._rto_retries = 0  # RTO expiries since SND.UNA last advanced
        self._rto_answered = 0  # ...of which window probes the peer answered
        self._last_rto_time = -1.0
        self._connect_deadline: float | None = None
        self._persist_deadline: float | None = None
        self._persist_backoff = 0
        self._keepalive_deadline: float | None = None
        self._keepalive_probes = 0
        self._probes_out = 0  # zero-window probes sent since the peer last answered
        self._probes_since: float | None = None  # when the first of them went out
        self._timewait_deadline: float | None = None
        self._finwait2_deadline: float | None = None
        self._unacked_since: float | None = None
        self._last_recv_time = 0.0
        self._challenge_window_start = 0.0
        self._challenge_count = 0
        self.challenge_gate: Callable[[float], bool] | None = None  # the host's limit
        self._passive = False
        self.orphaned = False
        self._force_send = False  # a persist timeout: send even a small or probe segment
        self._last_keepalive_time = 0.0
        self._syn_time: float | None = None
        self._syn_sent_at: float | None = None  # the latest transmission of our SYN
        # -- kernel errors (on_kernel_error) --
        self.soft_error: int | None = None  # errno of the last soft error (like SO_ERROR)
        self._soft_error_time = 0.0  # when it arrived
        self._soft_error_first = 0.0  # when that kind of error first answered us
        self._unreachable_first: float | None = None  # first of a run of port unreachables
        self._unreachable_count = 0
        self._unreachable_span = 0.0  # the RTO when that run began

    # ------------------------------------------------------------------ properties

    @property
    def snd_una(self) -> int:
        return (self.iss + self._snd_una) & MASK

    @property
    def snd_nxt(self) -> int:
        return (self.iss + self._snd_nxt) & MASK

    @property
    def rcv_nxt(self) -> int:
        return (self.irs + self.rcvbuf.nxt + (1 if self._fin_received else 0)) & MASK

    @property
    def rcv_wnd(self) -> int:
        return max(0, self._rcv_adv - self.rcvbuf.nxt)

    def _mss_changed(self) -> None:
        """``effective_mss``, the largest payload per segment: min of both MSS values less
        per-segment options. Called whenever local_mss, peer_mss or ts_ok changes."""
        self.effective_mss = max(1, min(self.local_mss, self.peer_mss) - (12 if self.ts_ok else 0))

    @property
    def rtt(self) -> RttEstimator:
        return self.recovery.rtt

    @property
    def cc(self) -> _congestion.CongestionController:
        return self.recovery.cc

    @property
    def scoreboard(self) -> Scoreboard:
        return self.recovery.scoreboard

    @property
    def rack(self) -> Rack:
        return self.recovery.rack

    @property
    def delivery_rate(self) -> float:
        """Bytes per second, the latest sample."""
        return self.recovery.delivery_rate

    @property
    def bytes_in_flight(self) -> int:
        return self.scoreboard.pipe

    @property
    def readable(self) -> int:
        """Bytes the application can receive right now."""
        return len(self.rcvbuf)

    @property
    def at_eof(self) -> bool:
        """The peer's FIN arrived and every byte before it has been read."""
        return self._fin_received and not self.rcvbuf.ready

    @property
    def send_space(self) -> int:
        """Bytes ``send()`` would accept now."""
        return self.sndbuf.free if self.state in CAN_QUEUE and not self._fin_queued else 0

    @property
    def unsent(self) -> int:
        return max(0, self.sndbuf.end - max(self._snd_nxt, 1))

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def in_recovery(self) -> bool:
        return self.recovery.in_recovery

    # ------------------------------------------------------------------ application calls

    def connect(self, now: float, *, defer: bool = False) -> None:
        """Active open (RFC 9293 3.10.1): CLOSED -> SYN-SENT. Creates output (a SYN; with
        ``defer``, Linux's TCP_FASTOPEN_CONNECT, only once ``send`` is called)."""
        if self.state is not State.CLOSED or self.error is not None:
            raise UtcpStateError(f"connect() in state {self.state}")
        self._choose_iss(now)
        self._connect_deadline = now + self.config.connect_timeout
        self._syn_due = not defer
        self._set_state(State.SYN_SENT)

    def listen(self) -> None:
        """Passive open (RFC 9293 3.10.1): CLOSED -> LISTEN."""
        if self.state is not State.CLOSED or self.error is not None:
            raise UtcpStateError(f"listen() in state {self.state}")
        self._passive = True
        self._set_state(State.LISTEN)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue application bytes (RFC 9293 3.10.2); returns how many were taken (bounded by
        the send buffer). Creates output once ``datagrams_to_send`` runs."""
        if self._fin_queued or self.state not in CAN_QUEUE:
            if self.error is not None:
                raise UtcpStateError(f"connection failed: {self.error}") from self.error
            raise UtcpStateError(f"send() in state {self.state} after shutdown or close")
        # TCP_FASTOPEN_CONNECT (connect(defer=True)): the first send releases the SYN.
        self._syn_due = self._syn_due or (self.state is State.SYN_SENT and not self._syn_sends)
        return self.sndbuf.write(data)

    @property
    def ack_pending(self) -> bool:
        """An ACK (a window update after ``receive``, say) is waiting to be sent."""
        return self._ack_now

    def receive(self, max_bytes: int = 65536) -> bytes:
        """Take up to ``max_bytes`` in-order bytes (RFC 9293 3.10.3). May create output (a
        window update, RFC 9293 3.8.6.2.2): then ``ack_pending`` is True."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        data = self.rcvbuf.read(max_bytes)
        if data and self.state in CAN_RECEIVE and self._window_update_urgent():
            self._ack_now = True
        return data

    def shutdown(self, now: float) -> None:
        """Close our sending direction: FIN after the queued data (RFC 9293 3.10.4)."""
        state = self.state
        if state in (State.LISTEN, State.SYN_SENT) and not self._fin_queued:
            if state is State.LISTEN:
                self._terminate(now, None)
                return
            self._fin_queued = True  # sent once ESTABLISHED (RFC 9293 3.10.4, SYN-SENT)
            return
        if self._fin_queued or state in (State.CLOSED,):
            return
        self._fin_queued = True
        if state is State.ESTABLISHED:
            self._set_state(State.FIN_WAIT_1)
        elif state is State.CLOSE_WAIT:
            self._set_state(State.LAST_ACK)
        # SYN-RECEIVED: the FIN waits until ESTABLISHED (RFC 9293 3.10.4).

    def close(self, now: float) -> None:
        """The application is done with the connection in both directions.

        RFC 1122 4.2.2.13: closing with received data still unread resets the connection;
        otherwise this is ``shutdown`` plus "orphaned": later data from the peer draws a
        RST and FIN-WAIT-2 is bounded by ``fin_wait_2_timeout``.
        """
        if self.state in (State.CLOSED,):
            return
        if self.state in (State.LISTEN, State.SYN_SENT):
            self._terminate(now, None)  # RFC 9293 3.10.4: delete the TCB
            return
        if self.rcvbuf.ready or self.rcvbuf.ooo_bytes:
            self.abort(now)
            return
        self.orphaned = True
        self.shutdown(now)
        if self.state is State.FIN_WAIT_2:
            self._finwait2_deadline = now + self.config.fin_wait_2_timeout

    def abort(self, now: float, *, error: Exception | None = None) -> None:
        """RFC 9293 3.10.5 ABORT: send a RST where the peer has state, then CLOSED. With
        ``error`` the connection fails with it (``ConnectionFailed``), as on a reset."""
        if self.state in RST_ON_ABORT:
            self._queue_rst(self.snd_nxt)
        self._terminate(now, error)

    def on_kernel_error(self, now: float, errno_: int, *, seq: int | None = None) -> bool:
        """An error the kernel reported about a segment we sent to this connection's peer:
        an ICMP error (RFC 1122 4.2.3.9, RFC 5461) or a send that failed, with ``errno_``
        as the kernel gave it and ``seq`` the sequence number of the quoted segment, if the
        error quotes one. The host has matched the 4-tuple. Returns False, and changes
        nothing, if the error concerns no segment of ours in flight (RFC 5927 4.1). May fail
        the connection (its ``ConnectionFailed`` event says why); creates no output.
        """
        return kernel_error(self, now, errno_, seq)

    # ------------------------------------------------------------------ options

    def set_send_buffer(self, size: int) -> None:
        """SO_SNDBUF: bytes the application may queue (never below what is queued now)."""
        if size < 1:
            raise ValueError("send buffer size must be positive")
        self.sndbuf.capacity = size

    def set_receive_buffer(self, size: int) -> None:
        """SO_RCVBUF: future window advertisements use the new size; the window scale was
        fixed by the SYNs (RFC 7323 2.2) and the right edge never moves left."""
        if size < 1:
            raise ValueError("receive buffer size must be positive")
        limit = 65535 << (self.rcv_wscale if self._offer_wscale is not None else 0)
        if self.state in BEFORE_SYN:
            limit = 65535 << MAX_WSCALE
            self._rcv_wnd_capacity = size
            if self.config.window_scaling:
                self._offer_wscale = self._wscale_for(size)
            return
        self._rcv_wnd_capacity = min(size, limit)
        self.rcvbuf.memory_limit = self._ooo_memory_limit()

    def set_mss(self, mss: int) -> None:
        """TCP_MAXSEG: before the SYN it is the MSS we announce; later it only lowers the
        segment size we send."""
        if not 64 <= mss <= 65495:
            raise ValueError("mss must be in 64..65495")
        if self.state in BEFORE_SYN and not self._snd_nxt:
            self.local_mss = mss
        else:
            self.local_mss = min(self.local_mss, mss)
        self._mss_changed()
        self.cc.set_mss(self.effective_mss)

    def set_congestion_control(self, name: str) -> None:
        """TCP_CONGESTION: switch algorithm, carrying the current cwnd and ssthresh over."""
        self.recovery.switch_controller(name)

    # ------------------------------------------------------------------ input

    def receive_segment(self, seg: Segment, now: float) -> None:
        """Process one decoded segment (RFC 9293 3.10.7). May create output."""
        self.stats.segments_received += 1
        state = self.state
        if self._ack_split and state in SYNCHRONIZED and (seg.payload or seg.flags & FIN):
            # RFC 5681 4.2: an ACK owed at once (out-of-order data, a stretch reaching
            # STRETCH_ACK_LIMIT) leaves before more data of the batch is processed.
            self._out.append(self._segment(ACK, self.snd_nxt, b"", now))
            self._ack_sent()
        if _fastpath.ENABLED and _fastpath.receive_fast(self, seg, now):
            return  # RFC 9293 3.10.7.4 header prediction: the common case, same outcome
        if state is State.CLOSED:
            self._closed_input(seg)
        elif state is State.LISTEN:
            self._listen_input(seg, now)
        elif state is State.SYN_SENT:
            self._syn_sent_input(seg, now)
        else:
            self._other_input(seg, now)

    def _closed_input(self, seg: Segment) -> None:
        # RFC 9293 3.10.7.1: all data is discarded; anything but a RST draws a RST.
        self._drop("connection closed")
        rst = reset_for(seg)
        if rst is not None:
            self._out.append(rst)

    def _listen_input(self, seg: Segment, now: float) -> None:
        # RFC 9293 3.10.7.2.
        if seg.flags & RST:
            self._drop("RST in LISTEN")
            return
        if seg.flags & ACK:
            self._drop("ACK in LISTEN")
            # RFC 9293 3.10.7.2: <SEQ=SEG.ACK><CTL=RST> back to the segment's source.
            self.stats.resets_sent += 1
            self._out.append(Segment(self.local_port, seg.src_port, seg.ack, 0, RST, 0))
            return
        if not seg.flags & SYN:
            self._drop("no SYN in LISTEN")
            return
        self.remote_port = seg.src_port
        self._take_syn(seg, now)
        self._choose_iss(now)
        self._syn_due = True
        self._last_recv_time = now
        self._connect_deadline = now + SYN_R2
        self._set_state(State.SYN_RECEIVED)
        _fastopen.syn_in(self, seg, now)

    def _syn_sent_input(self, seg: Segment, now: float) -> None:
        # RFC 9293 3.10.7.3.
        flags = seg.flags
        if flags & ACK:
            ack_off = self._ack_offset(seg.ack)
            # first: SEG.ACK =< ISS or SEG.ACK > SND.NXT is unacceptable.
            if not 0 < ack_off <= self._snd_nxt:
                self._drop("unacceptable ACK in SYN-SENT")
                if not flags & RST:
                    self._queue_rst(seg.ack)
                return
        if flags & RST:
            # second: RFC 5961 3.2 in SYN-SENT: a RST is acceptable only if it ACKs our SYN.
            if flags & ACK:
                self._terminate(now, ConnectionRefusedError("connection refused by peer"))
            else:
                self._drop("RST without ACK in SYN-SENT")
            return
        if not flags & SYN:
            self._drop("no SYN in SYN-SENT")
            return
        # fourth: the SYN.
        self._take_syn(seg, now)
        self._last_recv_time = now
        if flags & ACK:
            self._snd_una = self._snd_nxt = _fastopen.synack_in(self, seg, now)
            self._syn_acked(seg, now)
            self._update_window(seg, force=True)
            self._set_state(State.ESTABLISHED)
            self._on_established(now)
            self._ack_now = True
        else:
            # Simultaneous open (RFC 9293 3.5, figure 8): answer with SYN-ACK.
            self._syn_due = True
            self._set_state(State.SYN_RECEIVED)

    def _take_syn(self, seg: Segment, now: float) -> None:
        """Record the peer's ISN and negotiate options from its SYN."""
        self.irs = seg.seq
        self.rcvbuf = ReceiveBuffer()
        self._last_ack_sent = 1
        # RFC 9293 3.7.1: MSS, else the 536-byte default.
        if seg.mss is not None:
            self.peer_mss = max(64, seg.mss)
        # RFC 7323 2.2: window scaling only if both SYNs carry the option.
        if seg.wscale is not None and self._offer_wscale is not None:
            self.snd_wscale = min(seg.wscale, MAX_WSCALE)
            self.rcv_wscale = self._offer_wscale
        else:
            self.snd_wscale = self.rcv_wscale = 0
            self._offer_wscale = None
        self._rcv_adv = 1 + self._window_space()
        # RFC 2018 2: SACK only if both sides sent SACK-permitted.
        self.sack_ok = seg.sack_permitted and self.config.sack
        # RFC 7323 3.2: timestamps only if the SYN carried them (and we offer them).
        if seg.timestamps is not None and self.config.timestamps:
            if self.state is State.LISTEN or (self.state is State.SYN_SENT and self.ts_ok):
                self.ts_ok = True
                self.ts_recent = seg.timestamps[0]
                self._ts_recent_time = now
        else:
            self.ts_ok = False
        self._mss_changed()
        self.cc.mss = self.effective_mss
        self.rcvbuf.memory_limit = self._ooo_memory_limit()
        self.cc.cwnd = max(
            self.cc.cwnd * self.effective_mss // max(1, self.local_mss), self.effective_mss
        )

    def _syn_acked(self, seg: Segment, now: float) -> None:
        """Our SYN is acknowledged: RTT sample from the handshake (Karn: only if sent once)."""
        # RFC 6298 3 (Karn): time the SYN (SYN-ACK) only if it was sent once, whether it was
        # resent by the timer, for a duplicate SYN, or as the SYN-ACK of a simultaneous
        # open; else from the echoed timestamp (RFC 7323 4.1).
        if self._syn_sends == 1 and self._syn_time is not None:
            self.rtt.on_sample(now - self._syn_time)
        elif self.ts_ok and seg.timestamps is not None and seg.timestamps[1]:
            self.rtt.on_sample(self._ts_rtt(seg.timestamps[1], now))
        elif self._syn_retries:
            self.rtt.reset_after_syn_loss(RTO_AFTER_SYN_LOSS)
        if self._syn_sends > 2:
            # RFC 6928 2: the initial window is reset to one segment only after "more than
            # one SYN or SYN/ACK retransmissions" (one may be spurious with a 1 s RTO).
            self.cc.on_handshake_loss()
        self._rto_retries = 0
        self._connect_deadline = None
        self._rto_deadline = _fastopen.rto_after_handshake(self, now)

    def _other_input(self, seg: Segment, now: float) -> None:
        """RFC 9293 3.10.7.4: SYN-RECEIVED and the synchronized states, step by step."""
        if not self._check_paws(seg, now):
            return
        # Simultaneous open (RFC 9293 3.5 figure 8): the peer's SYN-ACK repeats the SYN we
        # already hold (the acceptability test lets a SYN at offset 0 through). Its SYN is
        # not processed again, but it stays on the segment: RFC 7323 2.2 (a MUST) reads the
        # window of a segment with SYN unscaled, and the text starts after it.
        synack_repeat = (
            self.state is State.SYN_RECEIVED
            and seg.flags & (SYN | ACK | RST) == SYN | ACK
            and self._seq_offset(seg.seq) == 0
            and self._ack_offset(seg.ack) == 1
        )
        if not self._check_sequence(seg, now):
            return
        if seg.flags & RST:
            self._handle_rst(seg, now)
            return
        if seg.flags & SYN and not synack_repeat:
            self._handle_syn_in_window(seg, now)
            return
        if not seg.flags & ACK:
            self._drop("no ACK")
            return
        if not self._handle_ack(seg, now):
            return
        if self.state is State.CLOSED:
            return
        self._handle_text(seg, now)
        self._handle_fin(seg, now)

    # RFC 7323 5.3 R1: PAWS, before the sequence check.
    def _check_paws(self, seg: Segment, now: float) -> bool:
        if not self.ts_ok or seg.flags & RST:
            return True
        if seg.timestamps is None:
            # RFC 7323 3.2: once TSopt is negotiated, a non-RST segment without one SHOULD
            # be silently dropped (it would slip past PAWS).
            self._drop("no timestamp")
            return False
        tsval = seg.timestamps[0]
        if seq_diff(tsval, self.ts_recent) >= 0:
            return True
        if now - self._ts_recent_time > PAWS_IDLE_LIMIT:
            return True  # RFC 7323 5.5: TS.Recent too old to trust
        self._drop("PAWS: old timestamp")
        self._ack_now = True
        if seg.payload:
            # A retransmission overtaken by a later one (reordering) fails PAWS, yet its
            # bytes may have arrived before: report what we hold as a duplicate (RFC 2883
            # 4), so the sender can still learn that its retransmission was spurious.
            start = self._seq_offset(seg.seq)
            dup = self._already_held(start, start + len(seg.payload))
            if dup is not None:
                self._report_duplicate(*dup)
        return False

    def _check_sequence(self, seg: Segment, now: float) -> bool:
        """RFC 9293 3.10.7.4 first: the segment acceptability test (four cases)."""
        seg_off = self._seq_offset(seg.seq)
        rcv_nxt = self.rcvbuf.nxt + (1 if self._fin_received else 0)
        rcv_wnd = max(0, self._rcv_adv - rcv_nxt)
        seg_len = seg.seg_len
        if seg_len == 0:
            ok = seg_off == rcv_nxt if rcv_wnd == 0 else rcv_nxt <= seg_off < rcv_nxt + rcv_wnd
        elif rcv_wnd == 0:
            ok = False
        else:
            end = seg_off + seg_len - 1
            ok = rcv_nxt <= seg_off < rcv_nxt + rcv_wnd or rcv_nxt <= end < rcv_nxt + rcv_wnd
        if self.state is State.SYN_RECEIVED and seg_off == 0:
            # A retransmitted SYN (answered by a SYN-ACK) or a keep-alive (see _handshake.py).
            ok = ok or bool(seg.flags & SYN) or late_final_ack(self, seg)
        if ok:
            return True
        # If RCV.WND is zero, an in-order segment's ACK, RST and FIN are still processed
        # (RFC 9293 3.10.7.4 "should be specially treated").
        if rcv_wnd == 0 and seg_off == rcv_nxt and seg.flags & (ACK | RST):
            if seg_len:
                # RFC 9293 3.8.6.1: data into a zero window still draws an ACK at once,
                # showing RCV.NXT and the zero window; the text itself is not accepted.
                self._ack_now = True
            return True
        self._drop("outside receive window")
        if seg.flags & (RST | SYN):
            if not seg.flags & RST:
                self._challenge_ack(now)  # RFC 5961 4.2: a SYN at any sequence number
            return False  # RFC 5961 3.2: a RST outside the window is dropped silently
        if seg.payload and seg_off < rcv_nxt:
            # RFC 2883 4.1.1: old data is reported in the first SACK block (a D-SACK).
            self._report_duplicate(seg_off, min(seg_off + len(seg.payload), rcv_nxt))
        if self.state is State.TIME_WAIT and seg.flags & FIN:
            # RFC 9293 3.10.7.4: a retransmitted FIN in TIME-WAIT is acknowledged and the
            # 2 MSL timeout restarted.
            self._timewait_deadline = now + 2 * self.config.msl
        self._ack_now = True  # <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>
        self.stats.dup_segments_received += 1
        return False

    def _handle_rst(self, seg: Segment, now: float) -> None:
        """RFC 9293 3.10.7.4 second, with RFC 5961 3.2's exact-match rule. CLOSING and
        LAST-ACK close quietly only when all our data was acknowledged: otherwise the data
        was lost and the application hears of the reset, as from Linux (a departure)."""
        if self.state is State.TIME_WAIT:
            # RFC 1337 fix F1: ignore RSTs in TIME-WAIT, so an old duplicate RST cannot cut
            # 2 MSL short (hazard H1). Linux does this with tcp_rfc1337=1; its default
            # lets the RST end TIME-WAIT. A deliberate departure from RFC 9293 3.10.7.4.
            self._drop("RST in TIME-WAIT (RFC 1337)")
            return
        rcv_nxt = self.rcvbuf.nxt + (1 if self._fin_received else 0)
        if self._seq_offset(seg.seq) != rcv_nxt:
            self._drop("RST not at RCV.NXT: challenge ACK")
            self._challenge_ack(now)
            return
        if self.state is State.SYN_RECEIVED and self._passive:
            # Passive open: the listener lives on in the host; this TCB just goes away.
            self._terminate(now, None)
        elif self.state is State.SYN_RECEIVED:
            self._terminate(now, ConnectionRefusedError("connection refused by peer"))
        elif self.state in CLOSE_QUIETLY_ON_RST and not self.sndbuf:
            self._terminate(now, None)
        else:
            self._terminate(now, ConnectionResetError("connection reset by peer"))

    def _handle_syn_in_window(self, seg: Segment, now: float) -> None:
        # RFC 9293 3.10.7.4 fourth + RFC 5961 4.2: a SYN here elicits a challenge ACK.
        if self.state is State.SYN_RECEIVED and self._seq_offset(seg.seq) == 0:
            self._drop("retransmitted SYN")
            self._update_ts_recent(seg, now)  # RFC 7323 4.3: the SYN-ACK echoes this SYN
            self._syn_due = True
            return
        self._drop("SYN in synchronized state: challenge ACK")
        self._challenge_ack(now)

    def _handle_ack(self, seg: Segment, now: float) -> bool:
        """RFC 9293 3.10.7.4 fifth. Returns False when the segment is to be dropped."""
        ack_off = self._ack_offset(seg.ack)
        if self.state is State.SYN_RECEIVED:
            if not 0 < ack_off <= self._snd_nxt:
                self._drop("unacceptable ACK in SYN-RECEIVED")
                self._queue_rst(seg.ack)
                return False
            self._ack_accepted(seg, now)
            self._snd_una = 1
            self._syn_acked(seg, now)
            self._update_window(seg, force=True)
            self._set_state(State.ESTABLISHED)
            self._on_established(now)
        # RFC 5961 5.2: acceptable if SND.UNA - MAX.SND.WND <= SEG.ACK <= SND.NXT.
        if ack_off > self._snd_nxt:
            self._drop("ACK for data not yet sent")
            self._challenge_ack(now)  # RFC 5961 5.2 and 7: an ACK back, rate-limited
            return False
        if ack_off < self._snd_una - max(self.max_snd_wnd, 1):
            self._drop("ACK too old (RFC 5961 5.2)")
            self._challenge_ack(now)
            return False
        self._ack_accepted(seg, now)
        self._process_ack(seg, ack_off, now)
        if self.state is State.CLOSED:
            return False
        fin_acked = self._fin_offset is not None and self._snd_una > self._fin_offset
        if fin_acked:
            if self.state is State.FIN_WAIT_1:
                self._set_state(State.FIN_WAIT_2)
                if self.orphaned:
                    self._finwait2_deadline = now + self.config.fin_wait_2_timeout
            elif self.state is State.CLOSING:
                self._enter_time_wait(now)
            elif self.state is State.LAST_ACK:
                self._terminate(now, None)
                return False
        if self.state is State.TIME_WAIT and seg.flags & FIN:
            # RFC 9293 3.10.7.4: the only thing that can arrive is a retransmitted FIN:
            # acknowledge it and restart the 2 MSL timeout.
            self._ack_now = True
            self._timewait_deadline = now + 2 * self.config.msl
        return True

    def _ack_accepted(self, seg: Segment, now: float) -> None:
        """The segment's ACK passed validation: only now may it change the TCB. RFC 9293
        3.10.7.4 fifth drops a segment that acknowledges data never sent, and RFC 7323 4.3
        takes TS.Recent only from segments that are not dropped, so a stale or forged
        segment can neither poison PAWS nor pass as a sign of a live peer."""
        self._update_ts_recent(seg, now)
        self._last_recv_time = now
        self._keepalive_probes = 0
        # RFC 9293 3.8.6.1: the peer answered; window probes start counting afresh.
        self._probes_out = 0
        self._probes_since = None

    def _process_ack(self, seg: Segment, ack_off: int, now: float) -> None:
        old_una = self._snd_una
        released = 0
        if ack_off > old_una:
            self._snd_una = ack_off
            released = self.sndbuf.acknowledge(min(ack_off, self.sndbuf.end))
            self.stats.bytes_acked += released
            self._rto_retries = self._rto_answered = 0
            self._persist_backoff = 0
        tsecr = seg.timestamps[1] if self.ts_ok and seg.timestamps is not None else None
        newly_sacked = self.recovery.on_ack(
            now,
            old_una=old_una,
            snd_una=self._snd_una,
            snd_nxt=self._snd_nxt,
            sack_ok=self.sack_ok,
            sack_blocks=[(self._ack_offset(a), self._ack_offset(b)) for a, b in seg.sack_blocks]
            if seg.sack_blocks
            else [],
            # RFC 5681 2: a duplicate ACK.
            dupack=(
                ack_off == old_una
                and seg.seg_len == 0
                and self._snd_nxt > self._snd_una
                and (seg.window << self.snd_wscale) == self.snd_wnd
            ),
            tsecr=tsecr,
            ts_rtt=self._ts_rtt(tsecr, now) if tsecr else None,
        )
        if ack_off > old_una:
            # RFC 6298 (5.2)/(5.3): stop the timer when all is acked, else restart it.
            if self._snd_una >= self._snd_nxt:
                self._rto_deadline = None
                self._unacked_since = None
            else:
                self._rto_deadline = now + self.recovery.rtt.current_rto()
                self._unacked_since = now
            if released:
                self._notify(SendSpaceAvailable)
        window_before = self.snd_wnd
        self._update_window(seg, ack_off=ack_off)
        if self.snd_wnd > window_before or newly_sacked:
            self._persist_backoff = 0

    def _update_window(self, seg: Segment, force: bool = False, ack_off: int | None = None) -> None:
        """RFC 9293 3.10.7.4 fifth: update SND.WND if the segment is newer (SND.WL1/WL2).
        ``ack_off``: SEG.ACK as an offset, if the caller has it."""
        seq_off = self._seq_offset(seg.seq)
        if ack_off is None:
            ack_off = self._ack_offset(seg.ack)
        if (
            force
            or self._snd_wl1 < seq_off
            or (self._snd_wl1 == seq_off and self._snd_wl2 <= ack_off)
        ):
            # RFC 7323 2.2: the window in a SYN is never scaled.
            shift = 0 if seg.flags & SYN else self.snd_wscale
            self.snd_wnd = seg.window << shift
            self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
            self._snd_wl1 = seq_off
            self._snd_wl2 = ack_off

    def _handle_text(self, seg: Segment, now: float) -> None:
        """RFC 9293 3.10.7.4 seventh: segment text."""
        payload = seg.payload
        if not payload:
            return
        if self.state not in CAN_RECEIVE:
            self._drop("data after the peer's FIN")
            return
        if self.orphaned:
            # RFC 1122 4.2.2.13: new data after CLOSE resets the connection.
            self._drop("data after close")
            self._queue_rst(self.snd_nxt)
            self._terminate(now, None)
            return
        seg_off = self._seq_offset(seg.seq) + (1 if seg.flags & SYN else 0)
        self._note_data_arrival(now)
        rb = self.rcvbuf
        had_gap = rb.has_gap
        before = rb.nxt
        full = len(payload) >= self.effective_mss
        dup = self._already_held(seg_off, seg_off + len(payload)) if seg_off != before else None
        moved = rb.insert(seg_off, payload, self._rcv_adv)
        self.stats.bytes_received += moved
        if moved:
            self._notify(DataReceived)
        if seg_off != before or had_gap:
            # RFC 5681 4.2 / RFC 9293 3.8.6.3: out-of-order data, or data that fills a gap,
            # is acknowledged at once.
            self._ack_now = True
            if dup is not None:
                self.stats.dup_segments_received += 1
                self._report_duplicate(*dup)
            elif seg_off > before:
                self.stats.ooo_segments_received += 1
                self._ack_split = True  # RFC 5681 4.2: a duplicate ACK per such segment
        else:
            self._schedule_delayed_ack(now, full)

    def _already_held(self, start: int, end: int) -> tuple[int, int] | None:
        """The first run of [start, end) we hold already: below RCV.NXT (RFC 2883 4.1.1), or
        out of order above it (4.1.2; the D-SACK block then precedes the SACK block that
        contains it, the newest block going first, which is how the sender tells it apart).
        """
        rcv_nxt = self.rcvbuf.nxt
        if start < rcv_nxt:
            return start, min(end, rcv_nxt)
        return self.rcvbuf.held(start, end)

    def _report_duplicate(self, start: int, end: int) -> None:
        """RFC 2883 4: the next ACK's first SACK block reports [start, end) as a duplicate.
        Duplicates that arrive before that ACK leaves and touch the pending one are reported
        together (one contiguous duplicate); otherwise the newest is reported."""
        if not self.sack_ok:
            return
        pending = self._dsack
        if pending is not None and start <= pending[1] and pending[0] <= end:
            start, end = min(start, pending[0]), max(end, pending[1])
        self._dsack = (start, end)

    def _note_data_arrival(self, now: float) -> None:
        """Quick-ACK mode, as Linux has it (tcp_event_data_recv, tcp_incr_quickack): the
        first data of a connection, or data after a pause longer than the RTO (the sender is
        restarting its window), is acknowledged at once for a few segments, so the peer's
        slow start is clocked by the path rather than by our delayed-ACK timer. RFC 5681 4.2
        allows ACKing more often than every second segment."""
        last = self._last_data_time
        self._last_data_time = now
        if last is None or now - last > self.recovery.rtt.current_rto():
            quota = (self._rcv_adv - self.rcvbuf.nxt) // (2 * self.effective_mss)
            bound = min(self.config.quick_acks, max(2, quota))
            self._quick_acks = max(self._quick_acks, bound)

    def _schedule_delayed_ack(self, now: float, full: bool) -> None:
        # RFC 1122 4.2.3.2 / RFC 9293 3.8.6.3: ACK at least every second full-sized segment,
        # and within the delayed-ACK timeout. RFC 5681 4.2 lets a receiver ACK more often:
        # while full-sized segments arrive sparsely (Config.quick_ack_gap), every one is.
        sparse = False
        if full:
            self._unacked_full_segments += 1
            gap_limit = self.config.quick_ack_gap
            if self._full_arrival is not None and gap_limit > 0:
                # One long pause moves the average by at most 10/8 of the limit.
                gap = min(now - self._full_arrival, 10 * gap_limit)
                self._full_gap += (gap - self._full_gap) / 8
                sparse = self._full_gap >= gap_limit
            self._full_arrival = now
        # Quick-ACK mode (_note_data_arrival), except while our replies carry the ACKs
        # (Linux's "pingpong" mode).
        quick = self._quick_acks > 0 and not self._pingpong
        if quick:
            self._quick_acks -= 1
        if quick or sparse or self._unacked_full_segments >= 2 or self.config.delayed_ack == 0:
            # RFC 5681 4.2 / RFC 9293 3.8.6.3: the ACK owed for every second full-sized segment
            # leaves after its batch, or before data past STRETCH_ACK_LIMIT is processed.
            self._ack_now = True
            self._ack_split = self.rcvbuf.nxt - self._last_ack_sent >= STRETCH_ACK_LIMIT
        elif self._delack_deadline is None:
            self._delack_deadline = now + self.config.delayed_ack

    def _handle_fin(self, seg: Segment, now: float) -> None:
        """RFC 9293 3.10.7.4 eighth: the FIN, processed only once it is in order."""
        rb = self.rcvbuf
        if seg.flags & FIN and not self._fin_received and self.state in CAN_RECEIVE:
            fin_off = self._seq_offset(seg.seq) + seg.seg_len - 1
            if fin_off < self._rcv_adv + 1:
                rb.fin_offset = fin_off
        if rb.fin_offset is None or self._fin_received or rb.nxt != rb.fin_offset:
            return
        self._fin_received = True
        self._ack_now = True
        self._events.append(EOFReceived())
        if self.state is State.ESTABLISHED:
            self._set_state(State.CLOSE_WAIT)
        elif self.state is State.FIN_WAIT_1:
            # Our FIN is not acked yet (else we would be in FIN-WAIT-2): simultaneous close.
            self._set_state(State.CLOSING)
        elif self.state is State.FIN_WAIT_2:
            self._enter_time_wait(now)

    def _challenge_ack(self, now: float) -> None:
        challenge_ack(self, now)  # RFC 5961 7: rate-limited, per connection and per host

    def _update_ts_recent(self, seg: Segment, now: float) -> None:
        # RFC 7323 4.3 (2): TS.Recent takes TSval when SEG.SEQ <= Last.ACK.sent.
        if (
            self.ts_ok
            and seg.timestamps is not None
            and self._seq_offset(seg.seq) <= self._last_ack_sent
            and seq_diff(seg.timestamps[0], self.ts_recent) >= 0
        ):
            self.ts_recent = seg.timestamps[0]
            self._ts_recent_time = now

    # ------------------------------------------------------------------ timers

    def next_timer(self) -> float | None:
        """The earliest deadline at which ``handle_timer`` must run, or None. (It runs for
        every connection touched, twice per flush: unrolled, most deadlines being None.)"""
        best = self.recovery.next_deadline()
        if (t := self._rto_deadline) is not None and (best is None or t < best):
            best = t
        if (t := self._delack_deadline) is not None and (best is None or t < best):
            best = t
        if (t := self._keepalive_deadline) is not None and (best is None or t < best):
            best = t
        if (t := self._persist_deadline) is not None and (best is None or t < best):
            best = t
        if (t := self._timewait_deadline) is not None and (best is None or t < best):
            best = t
        if (t := self._finwait2_deadline) is not None and (best is None or t < best):
            best = t
        if (t := self._connect_deadline) is not None and (best is None or t < best):
            best = t
        if (uto := self.user_timeout) is not None:  # _user_timeout_deadline, inline
            start, probes = self._unacked_since, self._probes_since
            if probes is not None and (start is None or probes < start):
                start = probes
            if start is not None and (best is None or start + uto < best):
                best = start + uto
        return best

    def _user_timeout_deadline(self) -> float | None:
        """RFC 9293 3.8.3 / RFC 5482: the user timeout runs while sent data is unacknowledged
        and while data waits behind a closed window whose probes go unanswered (as Linux
        applies TCP_USER_TIMEOUT to window probes)."""
        start, probes = self._unacked_since, self._probes_since
        if probes is not None and (start is None or probes < start):
            start = probes
        return None if start is None or self.user_timeout is None else start + self.user_timeout

    def handle_timer(self, now: float) -> None:
        """Run every timer due at ``now`` (see ``_timers``). May create output."""
        _timers.handle_timer(self, now)

    # ------------------------------------------------------------------ output

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Everything to put on the wire now, encoded. Creates output by definition."""
        return list(map(encode, self.segments_to_send(now)))

    def segments_to_send(self, now: float) -> list[Segment]:
        """Like ``datagrams_to_send`` but as ``Segment`` objects (for tests and tracing)."""
        out = self._out
        self._out = []
        queued = len(out)  # queued ACKs called _ack_sent when they were made
        state = self.state
        if self._syn_due and state in HANDSHAKING:
            out.append(_fastopen.syn_out(self, self._syn_segment(now), now))
            self._ack_now = False
        elif state is State.SYN_RECEIVED and self._ack_now:
            # RFC 9293 3.10.7.4 first: an unacceptable segment draws
            # <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK> in SYN-RECEIVED too.
            out.append(self._segment(ACK, self.snd_nxt, b"", now))
            self._ack_sent()
        elif state in SYNCHRONIZED or _fastopen.sends_early(self):
            self._output_data(out, now)
            acking = data = False
            for seg in out[queued:] if len(out) > queued else ():
                data = data or bool(seg.payload)
                acking = acking or bool(seg.flags & ACK and not seg.flags & RST)
            if data and self._replies_to_data(now):
                self._pingpong = True
            delack_due = self._delack_deadline is not None and self._delack_deadline <= now
            if not acking and (self._ack_now or delack_due):
                out.append(self._segment(ACK, self.snd_nxt, b"", now))
                acking = True
            if acking:
                self._ack_sent()
            _timers.arm_idle_timers(self, now)
        self.stats.segments_sent += len(out)
        return out

    def _replies_to_data(self, now: float) -> bool:
        """Linux's pingpong test (tcp_event_data_sent): data sent within the delayed-ACK
        time of the last data received answers it."""
        last = self._last_data_time
        return last is not None and now - last < self.config.delayed_ack

    def _syn_segment(self, now: float) -> Segment:
        """SYN or SYN-ACK with our options (RFC 9293 3.7.1, RFC 7323, RFC 2018)."""
        self._syn_due = False
        self._syn_sends += 1
        self._syn_sent_at = now
        if self._syn_sends == 1:
            self._syn_time = now
        else:
            self.stats.retransmits += 1
        self._snd_nxt = max(self._snd_nxt, 1)
        self._rto_deadline = now + self.rtt.current_rto()
        synack = self.state is State.SYN_RECEIVED
        ts: tuple[int, int] | None = None
        if self.config.timestamps and (not synack or self.ts_ok):
            self.ts_ok = self.ts_ok or not synack
            self._mss_changed()
            ts = (self._ts_now(now), self.ts_recent if synack else 0)
        return Segment(
            self.local_port,
            self.remote_port,
            self.iss,
            self.rcv_nxt if synack else 0,
            SYN | ACK if synack else SYN,
            min(self._window_space(), 65535),
            mss=self.local_mss,
            wscale=self._offer_wscale
            if (not synack or self.snd_wscale or self.rcv_wscale or self._offer_wscale is not None)
            else None,
            sack_permitted=self.config.sack and (not synack or self.sack_ok),
            timestamps=ts,
        )

    def _output_data(self, out: list[Segment], now: float) -> None:
        force = self._force_send
        self._force_send = False
        rec = self.recovery
        rec.output_started()
        sent_before = len(out)
        # The short path (_fastpath.ENABLED) skips steps 1 and 2 when they have nothing to
        # send: no segment deemed lost, no unsent data, no FIN (as after a request whose
        # reply is not written yet).
        if (
            not _fastpath.ENABLED
            or rec.scoreboard.lost_bytes
            or self.sndbuf.end > max(self._snd_nxt, 1)
            or (self._fin_queued and self._fin_pending())
        ):
            # 1. retransmissions of segments deemed lost (RFC 6675 5 NextSeg rule 1, RFC 6298).
            while (seg := rec.next_retransmission(now)) is not None:
                self._retransmit(seg, out, now)
            # 2. new data within the peer's window and the congestion window.
            sent_before = len(out)
            _output.new_data(self, out, now, force)
        # 3. RFC 8985 7.3: a due tail loss probe: new data if the window allows, else the
        # highest segment sent again.
        if rec.take_probe() and len(out) == sent_before and self.state in SYNCHRONIZED:
            _output.new_data(self, out, now, True, probe=True)
            last = self.scoreboard.last()
            resent: int | None = None
            if len(out) == sent_before and last is not None:
                resent = last.start
                self._retransmit(last, out, now)
            if len(out) > sent_before:
                rec.on_probe_sent(self._snd_nxt, retransmission=resent)
        rec.after_output(
            now,
            snd_nxt=self._snd_nxt,
            probe_allowed=(
                self.sack_ok
                and self.config.tail_loss_probe
                and self.state in SYNCHRONIZED
                and self._rto_retries == 0
            ),
            rto_deadline=self._rto_deadline,
        )

    def _retransmit(self, seg: SentSegment, out: list[Segment], now: float) -> None:
        out.append(self._data_segment(seg.start, seg.end, seg.fin, now))
        self.recovery.on_retransmit(seg, now)
        if self._rto_deadline is None:
            self._rto_deadline = now + self.rtt.current_rto()

    def _fin_pending(self) -> bool:
        return self._fin_queued and self._fin_offset is None and self.state in SENDING_FIN

    def _data_segment(self, start: int, end: int, fin: bool, now: float) -> Segment:
        data_stop = end - 1 if fin else end
        payload = self.sndbuf.get(start, data_stop)
        flags = ACK | (FIN if fin else 0) | (PSH if payload and data_stop == self.sndbuf.end else 0)
        return self._segment(flags, (self.iss + start) & MASK, payload, now)

    def _segment(self, flags: int, seq: int, payload: bytes, now: float) -> Segment:
        """A segment with ACK, window, timestamps and SACK blocks filled in."""
        ts = ((int(now * TS_HZ) + self._ts_offset) & MASK, self.ts_recent) if self.ts_ok else None
        sack: tuple[tuple[int, int], ...] = ()
        rb = self.rcvbuf
        if self.sack_ok and (rb.has_gap or self._dsack):
            room = 40 - (12 if ts else 0)
            max_blocks = min(4, (room - 4) // 8)
            if payload:
                spare = min(self.local_mss, self.peer_mss) - len(payload) - (12 if ts else 0)
                max_blocks = min(max_blocks, max(0, (spare - 4) // 8))
            base = self.irs
            blocks = self.rcvbuf.sack_blocks(max_blocks)
            if self._dsack is not None and max_blocks > 0:
                # RFC 2883 4: the D-SACK block goes first, once.
                blocks = [self._dsack, *blocks[: max_blocks - 1]]
                self._dsack = None
                self.stats.dsacks_sent += 1
            sack = tuple(((base + s) & MASK, (base + e) & MASK) for s, e in blocks)
        return Segment(
            self.local_port,
            self.remote_port,
            seq,
            (self.irs + rb.nxt + self._fin_received) & MASK,  # RCV.NXT
            flags,
            self._advertise_window(),
            payload,
            sack_blocks=sack,
            timestamps=ts,
        )

    def _ack_sent(self) -> None:
        self._ack_now = False
        self._ack_split = False
        self._delack_deadline = None
        self._unacked_full_segments = 0
        self._last_ack_sent = self.rcvbuf.nxt + (1 if self._fin_received else 0)

    def _queue_rst(self, seq: int) -> None:
        self.stats.resets_sent += 1
        self._out.append(Segment(self.local_port, self.remote_port, seq & MASK, 0, RST, 0))

    # ------------------------------------------------------------------ windows

    def _choose_wscale(self) -> int:
        return self._wscale_for(self.config.receive_buffer_size)

    @staticmethod
    def _wscale_for(size: int) -> int:
        # RFC 7323 2.2: the smallest shift that lets the buffer be advertised.
        shift = 0
        while (65535 << shift) < size and shift < MAX_WSCALE:
            shift += 1
        return shift

    def _ooo_memory_limit(self) -> int:
        """What out-of-order data may cost (payload plus per-block overhead): the receive
        buffer filled with full-sized segments. Smaller segments reach it with less
        payload, and the highest blocks are then dropped (RFC 2018 8). A peer's tiny MSS
        does not raise it: segments are counted at 536 bytes at least (RFC 9293 3.7.1)."""
        cap = self._rcv_wnd_capacity
        return cap + (cap // max(self.effective_mss, DEFAULT_PEER_MSS) + 1) * BLOCK_OVERHEAD

    def _window_space(self) -> int:
        """Receive-buffer space beyond RCV.NXT, no more than the window field can carry
        (RFC 7323 2.2: 65535 << Rcv.Wind.Shift), so the acceptance edge never passes what
        was advertised."""
        space, limit = self._rcv_wnd_capacity - len(self.rcvbuf), 65535 << self.rcv_wscale
        return 0 if space <= 0 else space if space <= limit else limit

    def _window_update_worthwhile(self, space: int) -> bool:
        """RFC 9293 3.8.6.2.2: move the right edge only by min(buffer/2, MSS) or more
        (``space``: ``_window_space()``)."""
        step = min(self._rcv_wnd_capacity // 2, self.local_mss)
        return self.rcvbuf.nxt + space - self._rcv_adv >= step

    def _window_update_urgent(self) -> bool:
        """Whether a read should send a window update now rather than with the next ACK:
        only when the SWS rule allows moving the edge and the window at least doubles
        (a peer with half a buffer of window left is not waiting for us)."""
        space = self._window_space()
        if not self._window_update_worthwhile(space):
            return False
        return space >= 2 * max(self._rcv_adv - self.rcvbuf.nxt, 0)

    def _advertise_window(self) -> int:
        """The 16-bit window field; never moves the right edge left (RFC 9293 3.8.6.2.2)."""
        nxt, shift, adv = self.rcvbuf.nxt, self.rcv_wscale, self._rcv_adv
        space = self._window_space()
        if self._window_update_worthwhile(space):
            adv = nxt + space
        field = min((adv - nxt if adv > nxt else 0) >> shift, 65535)
        if (field << shift) + nxt < adv and field < 65535:
            field += 1  # round up rather than shrink the edge by the scaling granularity
        edge = nxt + (field << shift)
        self._rcv_adv = adv if adv >= edge else edge
        if field == 0:
            self.stats.zero_windows_advertised += 1
        return field

    # ------------------------------------------------------------------ state changes

    def _on_established(self, now: float) -> None:
        self._events.append(Established())
        self._last_recv_time = now
        if self._fin_queued:
            self._set_state(State.FIN_WAIT_1)

    def _stop_sending_timers(self) -> None:
        """Nothing of ours is left to (re)send or probe: TIME-WAIT, or the TCB is gone."""
        self._rto_deadline = None
        self.recovery.stop_timers()
        self._persist_deadline = None
        self._keepalive_deadline = None
        self._finwait2_deadline = None
        self._unacked_since = None
        self._probes_since = None

    def _enter_time_wait(self, now: float) -> None:
        self._set_state(State.TIME_WAIT)
        self._stop_sending_timers()
        # RFC 9293 3.10.7.4 / 3.4.2: 2 MSL.
        self._timewait_deadline = now + 2 * self.config.msl

    def _terminate(self, now: float, error: Exception | None, *, rst: bool = False) -> None:
        """Delete the TCB: CLOSED, all timers off, the application told why."""
        if self.state is State.CLOSED:
            return
        if rst:
            self._queue_rst(self.snd_nxt)
        if (
            isinstance(error, ConnectionTimedOut)
            and self.soft_error is not None
            and self._soft_error_time >= self._last_recv_time
        ):
            # Like Linux (tcp_write_err), a timeout names the soft error that explains it.
            code = self.soft_error
            text = ERROR_TEXT.get(code, f"error {errno.errorcode.get(code, code)}")
            error = ConnectionTimedOut(f"{error.reason}; last network error: {text}")
        if error is not None and self.error is None:
            self.error = error
            self._events.append(ConnectionFailed(error))
        self._stop_sending_timers()
        self._delack_deadline = None
        self._timewait_deadline = None
        self._connect_deadline = None
        self._syn_due = False
        self._ack_now = False
        self._set_state(State.CLOSED)
        self._events.append(Closed())

    def _set_state(self, new: State) -> None:
        """Every state change goes through here (STYLE.md rule 4)."""
        old = self.state
        if old is new:
            return
        if (old, new) not in TRANSITIONS:
            # RFC 9293 3.3.2 figure 5 has no such edge: a bug here, not the peer's doing.
            raise UtcpInternalError(f"illegal state change {old} -> {new}")
        self.state = new
        self._events.append(StateChanged(old, new))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%d>%d %s -> %s", self.local_port, self.remote_port, old, new)

    def _drop(self, reason: str) -> None:
        """Every dropped segment is counted by reason (STYLE.md rule 4)."""
        self.stats.drops[reason] = self.stats.drops.get(reason, 0) + 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%d>%d drop: %s", self.local_port, self.remote_port, reason)

    def _notify(self, kind: type[DataReceived | SendSpaceAvailable]) -> None:
        """Queue a level event at most once until the application takes it: the queue is
        bounded by the connection's state, not by the peer's traffic (a connection nobody
        accepts yet would otherwise pile up one event per segment)."""
        if kind not in self._pending_levels:
            self._pending_levels.append(kind)
            self._events.append(kind())

    def next_event(self) -> Event | None:
        """The next event for the application, or None."""
        if not self._events:
            return None
        event = self._events.pop(0)
        if type(event) in self._pending_levels:
            self._pending_levels.remove(type(event))
        return event

    # ------------------------------------------------------------------ helpers

    def _choose_iss(self, now: float) -> None:
        if self._iss_override is not None:
            self.iss = self._iss_override & MASK
        else:
            self.iss = rfc6528_isn(self._isn_key, self._conn_id, now)
        # RFC 7323 7.1: a per-connection random timestamp offset, from the same keyed hash.
        self._ts_offset = rfc6528_isn(self._isn_key, self._conn_id + b"ts", 0.0)

    def _ts_now(self, now: float) -> int:
        return (int(now * TS_HZ) + self._ts_offset) & MASK

    def _ts_rtt(self, tsecr: int, now: float) -> float:
        return max(0, seq_diff((int(now * TS_HZ) + self._ts_offset) & MASK, tsecr)) / TS_HZ

    def _seq_offset(self, seq: int) -> int:
        """A received sequence number as an offset in the peer's stream (near RCV.NXT)."""
        return self.rcvbuf.nxt + seq_diff(seq, (self.irs + self.rcvbuf.nxt) & MASK)

    def _ack_offset(self, ack: int) -> int:
        """A received acknowledgment number as an offset in our stream (near SND.UNA)."""
        return self._snd_una + seq_diff(ack, (self.iss + self._snd_una) & MASK)
