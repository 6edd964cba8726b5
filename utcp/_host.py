"""A sans-IO host: many connections and listeners behind one UDP address.

The trio endpoint used to be the natural home of demultiplexing; it lives here instead so
that the very same code runs under the simulated network and over real sockets: the host is
fed ``(datagram, source address)`` batches and ``now``, and answers with ``(datagram,
destination)`` pairs and a timer deadline, like a single connection does.

Demultiplexing key (WIRE.md "Ports"): (peer UDP address, peer TCP port, local TCP port).

Cost per event (ARCHITECTURE.md, "Performance shape"): nothing here walks every connection
except a close of the whole host (``abort_all``, ``unlisten``). A connection needs looking at
only after something happened to it: a segment arrived, one of its timers fired, or the
application called it. The first two the host sees itself; the third the caller reports with
``touch(conn)``. Touched connections are flushed, their timers re-armed and their
listener/close bookkeeping settled at the next ``datagrams_to_send``, which then lists them
in ``woken`` (their events and states may have changed) and the listener ports whose accept
queue grew in ``accept_changed``. Timers live in one heap of ``(deadline, tiebreak, conn)``
entries with lazy invalidation: each connection's current deadline is remembered beside its
one live entry, stale entries are skipped when they come up, and a deadline that moved later
keeps its earlier entry, which is re-queued when it surfaces.

Failure isolation: every call from the host into a connection is guarded. An exception from
the core aborts that connection alone (``ConnectionAbortedError`` chained to the exception,
a RST to the peer where it has state), is logged once with its traceback and counted in
``HostStats.connection_failures``; the host and every other connection go on.
"""

from __future__ import annotations

import errno
import heapq
import ipaddress
import itertools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import _fastopen
from ._config import Config
from ._connection import Connection
from ._errors import KernelError
from ._limits import ChallengeAckLimit, PerSourceBuckets, TokenBucket, connection_memory
from ._seq import seq_gt
from ._state import SYNCHRONIZED, State
from ._syncookies import (
    COOKIE_PERIOD,
    MAX_COOKIE_AGE,
    SynCookies,
    cookie_synack,
    cookie_tsval,
    decode_ack,
    open_from_cookie,
    ts_clock,
)
from ._wire import ACK, RST, SYN, Address, DecodeError, Segment, decode_untrusted, encode, reset_for

ErrorFactory = Callable[[], Exception]

log = logging.getLogger("utcp.host")

ConnKey = tuple[Address, int, int]
IssFunction = Callable[[bytes, float], int]

EPHEMERAL_FIRST = 49152
EPHEMERAL_LAST = 65535
# RFC 9000 8.1's anti-amplification limit: until its address is validated, a half-open
# connection sends its peer at most 3 times the bytes it received from it. One SYN-ACK per
# SYN would be 1x, but then a client whose final ACK is lost and that waits for the server
# to speak would wait forever: its keep-alives cannot complete our handshake (RFC 9293
# 3.10.7.4 first), only our SYN-ACK retransmission draws a new ACK. Each datagram is also
# no larger than the largest one received (docs/HARDENING.md "Amplification").
AMPLIFICATION_FACTOR = 3


@dataclass
class HostStats:
    datagrams_received: int = 0
    datagrams_sent: int = 0
    malformed_drops: int = 0
    checksum_drops: int = 0
    resets_sent: int = 0
    resets_rate_limited: int = 0  # RSTs not sent: the global bucket was empty
    resets_rate_limited_per_source: int = 0  # ... the source's bucket was empty
    syns_dropped_backlog: int = 0  # the accept queue was full
    syns_dropped_half_open: int = 0  # SYN queue or per-source bound full, cookies off
    syns_dropped_connection_limit: int = 0  # SYNs and cookie ACKs past max_connections
    syn_cookies_sent: int = 0
    syn_cookies_validated: int = 0  # cookie ACKs that opened a connection
    syn_cookies_rejected: int = 0  # ACKs to a listener that were no valid cookie
    syn_cookies_dropped: int = 0  # valid cookie ACKs dropped: accept queue full
    synacks_trimmed: int = 0  # SYN-ACKs sent without MSS option to fit the SYN's size
    amplification_drops: int = 0  # datagrams withheld: more than an unvalidated peer sent
    challenge_acks_sent: int = 0  # RFC 5961 challenge ACKs the global limit let through
    challenge_acks_rate_limited: int = 0  # ... and those it stopped
    connection_failures: int = 0  # connections aborted because the core raised inside them
    kernel_errors: int = 0  # ICMP errors and failed sends reported by the transport
    kernel_errors_unmatched: int = 0  # of which: no connection (or several) to blame
    kernel_errors_ignored: int = 0  # of which: the connection had no such segment in flight
    fastopen_refused: int = 0  # Fast Open SYNs given a plain handshake (RFC 7413 5.1)
    drops: dict[str, int] = field(default_factory=dict)


def _is_loopback(ip: str) -> bool:
    """A loopback source cannot be forged from outside the machine: Linux exempts it from
    its per-peer ICMP rate limit (icmpv4_xrlim_allow), and so does the per-source RST
    limit here (the global one still applies)."""
    try:
        return ipaddress.ip_address(ip.split("%")[0]).is_loopback
    except ValueError:
        return False


class _Listener:
    __slots__ = (
        "accept_queue",
        "backlog",
        "config",
        "cookies_sent_at",
        "fastopen",
        "half_open",
        "pending",
    )

    def __init__(self, backlog: int, config: Config) -> None:
        self.backlog = backlog
        self.config = config
        self.pending: set[Connection] = set()
        self.accept_queue: deque[Connection] = deque()
        self.half_open: dict[str, int] = {}  # pending connections per source IP address
        self.cookies_sent_at: float | None = None
        self.fastopen: _fastopen.ListenerFastOpen | None = None  # RFC 7413, when enabled

    def syn_queue_full(self, source: str, per_source: int) -> bool:
        """RFC 4987 3.6: whether a SYN from ``source`` must get a cookie rather than state:
        the SYN queue (half-open connections, bounded by the backlog as in Linux) is full,
        or that source holds ``per_source`` of them."""
        return len(self.pending) >= self.backlog or self.half_open.get(source, 0) >= per_source

    def add_pending(self, conn: Connection, source: str) -> None:
        self.pending.add(conn)
        self.half_open[source] = self.half_open.get(source, 0) + 1

    def remove_pending(self, conn: Connection) -> None:
        if conn not in self.pending:
            return
        self.pending.discard(conn)
        addr = conn.remote_address
        assert addr is not None
        left = self.half_open[addr[0]] - 1
        if left:
            self.half_open[addr[0]] = left
        else:
            del self.half_open[addr[0]]


class Host:
    """Connections and listeners sharing one UDP socket address."""

    def __init__(
        self,
        config: Config,
        *,
        address: Address,
        isn_key: bytes,
        iss_function: IssFunction | None = None,
        fastopen_cache: _fastopen.ClientCache | None = None,
    ) -> None:
        """``isn_key`` is the RFC 6528 secret (the Fast Open cookie secret derives from it
        too); ``iss_function(conn_id, now)`` may replace the ISN generator (tests use it to
        start sequence numbers near 2**32); ``fastopen_cache`` holds the Fast Open cookies
        of servers (default: the process-wide ``_fastopen.shared_cache()``)."""
        self.config = config
        self.address = address
        self.ipv6 = ":" in address[0]
        self._isn_key = isn_key
        self._iss_function = iss_function
        self.fastopen_cache = fastopen_cache or _fastopen.shared_cache()
        self._cookie_keys = _fastopen.CookieKeys(isn_key)
        self.connections: dict[ConnKey, Connection] = {}
        self.listeners: dict[int, _Listener] = {}
        self.stats = HostStats()
        self._out: list[tuple[bytes, Address]] = []
        self._rst_bucket = TokenBucket(config.rst_rate_limit)
        self._rst_per_source = PerSourceBuckets(config.rst_rate_limit_per_source)
        self._cookies = SynCookies(isn_key)
        self._challenge_limit = ChallengeAckLimit(config.challenge_ack_limit_global, isn_key)
        # Half-open passive connections: bytes they may still send to their unvalidated
        # peer (docs/HARDENING.md "Amplification"), and the size of the datagram in hand.
        self._unvalidated: dict[Connection, list[int]] = {}  # [budget, largest datagram]
        self._rx_len = 0
        self._next_ephemeral = EPHEMERAL_FIRST
        self._now = 0.0  # the latest time we were given (for failures found outside a call)
        # Work pending: connections touched since the last flush (insertion-ordered, so
        # output order is deterministic), and those whose deadline may have changed since
        # their timer was last armed.
        self._touched: dict[Connection, None] = {}
        self._unarmed: dict[Connection, None] = {}
        self._pending_of: dict[Connection, _Listener] = {}  # passive opens mid-handshake
        self._accept_grew: set[int] = set()
        # The timer heap: see the module docstring.
        self._timers: list[tuple[float, int, Connection]] = []
        self._deadline: dict[Connection, float] = {}
        # WIRE.md "Sizes": the MSS the route toward a peer allows (the endpoint's transport
        # answers; None: the family default), and the configs derived with it.
        self.path_mss: Callable[[Address], int | None] | None = None
        self._mss_configs: dict[tuple[Config, int], Config] = {}
        self._entry: dict[Connection, tuple[float, int]] = {}
        self._tiebreak = itertools.count()
        self.woken: list[Connection] = []
        """Connections the last ``datagrams_to_send`` looked at (events may be waiting)."""
        self.accept_changed: set[int] = set()
        """Listener ports whose accept queue grew before the last ``datagrams_to_send``."""
        self.touch_all = False
        """Treat every connection as touched before each flush and timer query: for
        protocol tests (``utcp.testing``) that call ``Connection`` methods directly, never
        for the trio layer (O(connections) per call)."""

    # ------------------------------------------------------------ application side

    def listen(
        self, port: int | None = None, *, backlog: int = 128, config: Config | None = None
    ) -> int:
        """Accept connections to TCP ``port`` (default: our UDP port). Returns the port."""
        port = self.address[1] if port is None else port
        if port in self.listeners:
            raise OSError(errno.EADDRINUSE, f"TCP port {port} is already listening")
        lst = self.listeners[port] = _Listener(max(1, backlog), config or self.config)
        self.set_fastopen_queue(port, lst.config.fastopen_queue)
        return port

    def set_fastopen_queue(self, port: int, queue_len: int) -> None:
        """TCP_FASTOPEN on a listener: take data from SYNs with valid cookies, with at most
        ``queue_len`` such connections in SYN-RECEIVED (RFC 7413 5.1); 0 turns it off."""
        lst = self.listeners[port]
        if queue_len < 0:
            raise ValueError("the Fast Open queue length must not be negative")
        if queue_len == 0:
            lst.fastopen = None
        elif lst.fastopen is None:
            lst.fastopen = _fastopen.ListenerFastOpen(self._cookie_keys, queue_len)
        else:
            lst.fastopen.queue_len = queue_len

    def fastopen_ready(self, remote: Address, remote_port: int | None, now: float) -> bool:
        """Whether a Fast Open connect to ``remote`` would put data in its SYN: a cookie is
        cached and no negative response holds it off (RFC 7413 4.1.3)."""
        rport = remote[1] if remote_port is None else remote_port
        entry = self.fastopen_cache.usable((remote, rport), now)
        return entry is not None and entry.cookie is not None

    def unlisten(self, port: int, now: float) -> None:
        """Stop listening; connections not yet accepted are reset."""
        lst = self.listeners.pop(port, None)
        if lst is None:
            return
        for conn in [*lst.pending, *lst.accept_queue]:
            self._abort(conn, now, None)

    def accept(self, port: int) -> Connection | None:
        lst = self.listeners.get(port)
        if lst is None or not lst.accept_queue:
            return None
        return lst.accept_queue.popleft()

    def accept_ready(self, port: int) -> bool:
        lst = self.listeners.get(port)
        return lst is not None and bool(lst.accept_queue)

    def connect(
        self,
        remote: Address,
        now: float,
        *,
        remote_port: int | None = None,
        local_port: int | None = None,
        config: Config | None = None,
        defer: bool = False,
    ) -> Connection:
        """Active open towards ``remote`` (TCP port defaults to its UDP port). With
        ``Config.fastopen_connect`` the SYN uses Fast Open (RFC 7413); ``defer`` holds it
        back until the first ``send`` so that the data can ride in it."""
        rport = remote[1] if remote_port is None else remote_port
        lport = self._pick_local_port(remote, rport) if local_port is None else local_port
        key = (remote, rport, lport)
        if key in self.connections:
            raise OSError(errno.EADDRINUSE, f"connection {key} already exists")
        if len(self.connections) >= self.config.max_connections:
            raise OSError(errno.ENOBUFS, "Config.max_connections reached")
        conn = self._new_connection(config or self.config, remote, rport, lport, now)
        if conn.config.fastopen_connect:
            conn.fastopen = _fastopen.ClientSession(self.fastopen_cache, (remote, rport))
        conn.connect(now, defer=defer)
        self.connections[key] = conn
        self.touch(conn)
        return conn

    def touch(self, conn: Connection) -> None:
        """Report an application call on ``conn`` (send, receive, shutdown, close, abort, an
        option): the next ``datagrams_to_send`` collects its output, re-arms its timer and
        lists it in ``woken``. Cheap; call it after every call that may create output."""
        self._touched[conn] = None
        self._unarmed[conn] = None

    def abort_all(self, now: float, error: ErrorFactory | None = None) -> None:
        """Abort every connection (RST where the peer has state) and stop every listener: a
        close of the whole host. ``error()``, if given, makes each connection's error."""
        for conn in list(self.connections.values()):
            self._abort(conn, now, error() if error is not None else None)
        for port in list(self.listeners):
            self.unlisten(port, now)
        self._settle(now)

    def memory_charged(self) -> int:
        """The memory all connections hold, as ``_limits.connection_memory`` charges it (a
        walk over every connection: for statistics, not for each datagram)."""
        return sum(connection_memory(conn) for conn in self.connections.values())

    def _pick_local_port(self, remote: Address, rport: int) -> int:
        # By default a client's TCP port is its UDP port (WIRE.md); further connections to
        # the same peer port take ephemeral ports.
        own = self.address[1]
        if (remote, rport, own) not in self.connections and own not in self.listeners:
            return own
        for _ in range(EPHEMERAL_LAST - EPHEMERAL_FIRST + 1):
            port = self._next_ephemeral
            self._next_ephemeral = port + 1 if port < EPHEMERAL_LAST else EPHEMERAL_FIRST
            if (remote, rport, port) not in self.connections and port not in self.listeners:
                return port
        raise OSError(errno.EADDRNOTAVAIL, "no free local TCP port")

    def _conn_id(self, remote: Address, rport: int, lport: int) -> bytes:
        return f"{self.address[0]}|{lport}|{remote[0]}|{remote[1]}|{rport}".encode()

    def _new_connection(
        self, config: Config, remote: Address, rport: int, lport: int, now: float
    ) -> Connection:
        conn_id = self._conn_id(remote, rport, lport)
        if config.mss is None and self.path_mss is not None:
            config = self._with_path_mss(config, remote)
        iss = self._iss_function(conn_id, now) if self._iss_function else None
        conn = Connection(
            config,
            local_port=lport,
            remote_port=rport,
            isn_key=self._isn_key,
            conn_id=conn_id,
            ipv6=self.ipv6,
            iss=iss,
        )
        conn.remote_address = remote
        conn.challenge_gate = self._challenge_gate
        return conn

    def _with_path_mss(self, config: Config, remote: Address) -> Config:
        """``config`` announcing the MSS of the route toward ``remote``, as kernel TCP
        derives it from the outgoing interface's MTU (RFC 9293 3.7.1, RFC 1122 4.2.2.6)."""
        assert self.path_mss is not None
        mss = self.path_mss(remote)
        if mss is None:
            return config
        key = (config, mss)
        derived = self._mss_configs.get(key)
        if derived is None:
            if len(self._mss_configs) >= 64:
                self._mss_configs.clear()
            derived = self._mss_configs[key] = config.replace(mss=mss)
        return derived

    # ------------------------------------------------------------ input

    def receive_datagrams(
        self, batch: Sequence[tuple[bytes | memoryview, Address]], now: float
    ) -> None:
        """Decode, demultiplex and feed a batch. Malformed datagrams are dropped and counted."""
        self._now = now
        for data, addr in batch:
            self.stats.datagrams_received += 1
            self._rx_len = len(data)
            try:
                seg = decode_untrusted(data)
            except DecodeError as exc:
                if exc.reason == "checksum":
                    self.stats.checksum_drops += 1
                else:
                    self.stats.malformed_drops += 1
                continue
            self._demux(seg, addr, now)
        self._settle(now)

    def handle_kernel_error(self, err: KernelError, now: float) -> None:
        """Hand an ICMP error or failed send to the connection it concerns (RFC 1122
        4.2.3.9). May fail that connection; creates no output.

        The quoted datagram is our own segment: its source port is our TCP port, its
        destination port the peer's. RFC 5927 4.1: an error must match a connection's
        4-tuple, and the connection checks the quoted sequence number; anything else is
        counted and changes nothing. An error quoting no ports (an ICMP message that kept
        only 8 bytes of UDP) is taken by the one connection to that address, if only one.
        """
        self.stats.kernel_errors += 1
        addr = err.destination
        quoted = err.quoted or b""
        seq: int | None = None
        conn: Connection | None = None
        if len(quoted) >= 4:
            lport = int.from_bytes(quoted[0:2], "big")
            rport = int.from_bytes(quoted[2:4], "big")
            conn = self.connections.get((addr, rport, lport))
            if len(quoted) >= 8:
                seq = int.from_bytes(quoted[4:8], "big")
        else:
            to_peer = [c for c in self.connections.values() if c.remote_address == addr]
            conn = to_peer[0] if len(to_peer) == 1 else None
        if conn is None:
            self.stats.kernel_errors_unmatched += 1
            self._count_drop("kernel error for no connection")
            log.debug("kernel error %d for %s matches no connection", err.errno, addr)
            return
        self.touch(conn)
        try:
            taken = conn.on_kernel_error(now, err.errno, seq=seq)
        except Exception as exc:
            self._fail(conn, exc, now)
            return
        if not taken:
            self.stats.kernel_errors_ignored += 1
            return
        self._settle(now)

    def _demux(self, seg: Segment, addr: Address, now: float) -> None:
        key = (addr, seg.src_port, seg.dst_port)
        conn = self.connections.get(key)
        if conn is not None and conn.state is State.TIME_WAIT and self._reuses_time_wait(conn, seg):
            self._abort(conn, now, None)
            self._collect(conn, now)
            self._forget(conn)
            conn = None
        if conn is not None:
            self._touched[conn] = self._unarmed[conn] = None  # touch(conn)
            if self._unvalidated and (room := self._unvalidated.get(conn)) is not None:
                room[0] += AMPLIFICATION_FACTOR * self._rx_len
                room[1] = max(room[1], self._rx_len)
            try:
                conn.receive_segment(seg, now)
            except Exception as exc:
                self._fail(conn, exc, now)
            return
        lst = self.listeners.get(seg.dst_port)
        if lst is not None and not seg.flags & (SYN | ACK | RST):
            # RFC 9293 3.10.7.2 fourth: LISTEN drops a segment with neither SYN nor ACK
            # (nor RST) without an answer.
            self._count_drop("no SYN in LISTEN")
            return
        if lst is not None and seg.flags & SYN and not seg.flags & (ACK | RST):
            if len(lst.accept_queue) >= lst.backlog:
                self.stats.syns_dropped_backlog += 1  # Linux drops these too (ListenOverflows)
                return
            if len(self.connections) >= self.config.max_connections:
                self.stats.syns_dropped_connection_limit += 1
                return
            if lst.syn_queue_full(addr[0], self.config.max_half_open_per_source):
                self._answer_with_cookie(lst, seg, addr, now)
                return
            conn = self._new_connection(lst.config, addr, seg.src_port, seg.dst_port, now)
            conn.listen()
            if lst.fastopen is not None and seg.fastopen_cookie is not None:
                conn.fastopen = self._fastopen_session(lst, lst.fastopen, addr)
            self.connections[key] = conn
            lst.add_pending(conn, addr[0])
            self._pending_of[conn] = lst
            self._unvalidated[conn] = [AMPLIFICATION_FACTOR * self._rx_len, self._rx_len]
            self.touch(conn)
            try:
                conn.receive_segment(seg, now)
            except Exception as exc:
                self._fail(conn, exc, now)
            return
        if (
            lst is not None
            and seg.flags & (ACK | SYN | RST) == ACK
            and self._open_from_cookie(lst, seg, addr, now)
        ):
            return
        # RFC 9293 3.10.7.1: no connection: answer anything but a RST with a RST.
        self._count_drop("no connection")
        rst = reset_for(seg)
        if rst is not None:
            self._send_rst(rst, addr, now)

    def _fastopen_session(
        self, lst: _Listener, fo: _fastopen.ListenerFastOpen, addr: Address
    ) -> _fastopen.ServerSession:
        """The Fast Open session of a passive connection whose SYN carries the option. RFC
        7413 5.1: refused (a plain handshake, no cookie) with the listener's Fast Open queue
        full, or while its SYN queue is under pressure: half the backlog in SYN-RECEIVED,
        or the backlog full. (A SYN answered without a TCB, as with SYN cookies, never gets
        here: such a SYN-ACK never takes data.)"""
        refuse = (
            len(fo.pending) >= fo.queue_len
            or 2 * len(lst.pending) >= lst.backlog
            or len(lst.pending) + len(lst.accept_queue) >= lst.backlog
        )
        if refuse:
            self.stats.fastopen_refused += 1
        return _fastopen.ServerSession(fo, _fastopen.client_id(addr), refuse=refuse)

    @staticmethod
    def _reuses_time_wait(conn: Connection, seg: Segment) -> bool:
        # RFC 9293 3.10.7.4 / RFC 6191: a new SYN above the old connection's sequence space
        # (or with a newer timestamp) may reopen a connection in TIME-WAIT.
        if not seg.flags & SYN or seg.flags & (ACK | RST):
            return False
        if conn.ts_ok and seg.timestamps is not None:
            return seq_gt(seg.timestamps[0], conn.ts_recent)
        return seq_gt(seg.seq, conn.rcv_nxt)

    def _answer_with_cookie(self, lst: _Listener, syn: Segment, addr: Address, now: float) -> None:
        """RFC 4987 3.6: a SYN-ACK whose ISN and TSval remember the SYN; no state is kept."""
        if not lst.config.syn_cookies:
            self.stats.syns_dropped_half_open += 1
            return
        conn_id = self._conn_id(addr, syn.src_port, syn.dst_port)
        isn = self._cookies.make_isn(conn_id, syn.seq, syn.mss or 536, now)
        tsval = None
        if syn.timestamps is not None and lst.config.timestamps:
            tsval = cookie_tsval(ts_clock(self._isn_key, conn_id, now), syn, lst.config)
        synack = cookie_synack(syn, lst.config, isn=isn, tsval=tsval, ipv6=self.ipv6)
        data = self._fit(encode(synack), self._rx_len)
        if data is None:
            return
        lst.cookies_sent_at = now
        self.stats.syn_cookies_sent += 1
        self._out.append((data, addr))

    def _open_from_cookie(self, lst: _Listener, ack: Segment, addr: Address, now: float) -> bool:
        """An ACK to a listener: if it returns a valid cookie, the connection it completes
        goes to the accept queue. Returns whether the segment was taken (else it is
        answered like any segment for no connection)."""
        sent = lst.cookies_sent_at
        if sent is None or now - sent > MAX_COOKIE_AGE * COOKIE_PERIOD:
            return False  # Linux: no cookie sent lately, none can be coming back
        conn_id = self._conn_id(addr, ack.src_port, ack.dst_port)
        isn = (ack.ack - 1) & 0xFFFFFFFF
        peer_isn = (ack.seq - 1) & 0xFFFFFFFF
        mss = self._cookies.check_isn(conn_id, peer_isn, isn, now)
        if mss is None and ack.flags == ACK and not ack.payload:
            # RFC 9293 3.8.4: a keep-alive probe has SEG.SEQ = SND.NXT - 1, the client's ISN
            # while it has sent nothing since the handshake: its cookie ACK was lost, or
            # dropped with the accept queue full, and it idled. The probe acknowledges our
            # SYN-ACK as well as that ACK would have (as ``_handshake.late_final_ack`` takes
            # it in SYN-RECEIVED), so it opens the connection; answering it with a RST would
            # reset a good connection (a deliberate departure from RFC 9293 3.10.7.2 and
            # Linux, whose keep-alives come after two hours, not Config.keepalive_idle).
            peer_isn = ack.seq
            mss = self._cookies.check_isn(conn_id, peer_isn, isn, now)
        syn = decode_ack(ack, mss, lst.config) if mss is not None else None
        if syn is None:
            self.stats.syn_cookies_rejected += 1
            # A cookie is checked against SEG.SEQ - 1, so it fails for any segment but the
            # client's first after the handshake. If that one was lost, a later data segment
            # arrives first: Linux answers it with a RST, killing a good connection. We drop
            # it unanswered instead, and the client's retransmission of its first segment
            # opens the connection (a deliberate departure; bare ACKs still get the RST).
            return ack.seg_len > 0  # data or FIN
        if len(lst.accept_queue) >= lst.backlog:
            self.stats.syn_cookies_dropped += 1
            return True
        if len(self.connections) >= self.config.max_connections:
            self.stats.syns_dropped_connection_limit += 1
            return True
        self.stats.syn_cookies_validated += 1
        conn = self._new_connection(lst.config, addr, ack.src_port, ack.dst_port, now)
        self.connections[(addr, ack.src_port, ack.dst_port)] = conn
        lst.add_pending(conn, addr[0])
        self._pending_of[conn] = lst
        self.touch(conn)
        try:
            open_from_cookie(conn, ack, isn, peer_isn, syn, now)
        except Exception as exc:
            self._fail(conn, exc, now)
        return True

    def _fit(self, data: bytes, budget: int) -> bytes | None:
        """``data`` for an unvalidated peer whose largest datagram had ``budget`` bytes: as
        is, without its MSS option if that makes a SYN-ACK fit (RFC 9293 3.7.1: the peer
        then assumes 536), or None: never larger than what it sent (docs/HARDENING.md)."""
        if len(data) > budget:
            seg = decode_untrusted(data)
            if seg.flags & SYN and seg.fastopen_cookie:
                # RFC 7413 4.1.1: the SYN asked for a Fast Open cookie (a 2-byte request
                # option); the answer may exceed it by the cookie itself (at most 16 bytes,
                # padded), which the total budget of AMPLIFICATION_FACTOR still bounds.
                budget += 4 * ((len(seg.fastopen_cookie) + 3) // 4)
            if len(data) > budget and seg.flags & SYN and seg.mss is not None:
                seg.mss = None
                data = encode(seg)
                if len(data) <= budget:
                    self.stats.synacks_trimmed += 1
                    return data
            if len(data) > budget:
                self.stats.amplification_drops += 1
                return None
        return data

    def _challenge_gate(self, now: float) -> bool:
        """RFC 5961 7 over the whole host (``Connection.challenge_gate``)."""
        if self._challenge_limit.allow(now):
            self.stats.challenge_acks_sent += 1
            return True
        self.stats.challenge_acks_rate_limited += 1
        return False

    def _send_rst(self, rst: Segment, addr: Address, now: float) -> None:
        # RFC 9293 3.10.7.1 answers strays with a RST (20 bytes, never more than the segment
        # that drew it), rate-limited in all and per source so that a flood of garbage
        # cannot aim RSTs at a victim.
        if not self._rst_bucket.take(now):
            self.stats.resets_rate_limited += 1
            return
        if not _is_loopback(addr[0]) and not self._rst_per_source.take(addr[0], now):
            self.stats.resets_rate_limited_per_source += 1
            return
        self.stats.resets_sent += 1
        self._out.append((encode(rst), addr))

    def _count_drop(self, reason: str) -> None:
        self.stats.drops[reason] = self.stats.drops.get(reason, 0) + 1

    # ------------------------------------------------------------ timers and output

    def next_timer(self) -> float | None:
        """The earliest deadline of any connection, or None."""
        if self.touch_all:
            self._touch_all()
        if self._unarmed:
            self._arm_touched()
        return self._peek()

    def _peek(self) -> float | None:
        heap, entries = self._timers, self._entry
        while heap:
            t, n, conn = heap[0]
            entry = entries.get(conn)
            if entry is None or entry[1] != n:
                heapq.heappop(heap)  # stale: the connection re-armed or went away
                continue
            deadline = self._deadline[conn]
            if deadline > t:
                # The deadline moved later since this entry was queued: queue it there.
                n = next(self._tiebreak)
                entries[conn] = (deadline, n)
                heapq.heapreplace(heap, (deadline, n, conn))
                continue
            return t
        return None

    def handle_timer(self, now: float) -> None:
        """Run the timers of the connections due at ``now`` (only those), each once. May
        create output."""
        if self.touch_all:
            self._touch_all()
        self._now = now
        self._arm_touched()
        heap = self._timers
        while (t := self._peek()) is not None and t <= now:
            _, _, conn = heapq.heappop(heap)
            del self._entry[conn], self._deadline[conn]  # re-armed at the next flush
            self.touch(conn)
            try:
                conn.handle_timer(now)
            except Exception as exc:
                self._fail(conn, exc, now)
        self._settle(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Every (datagram, destination) pair due now, from the connections touched since the
        last call (see the module docstring); they become ``woken``."""
        if self.touch_all:
            self._touch_all()
        self._now = now
        touched = self._touched
        if touched:
            for conn in touched:
                self._collect(conn, now)
            self._unarmed.update(touched)  # output arms timers (RTO, persist, keepalive...)
            self._arm_touched()
            self._settle(now)
        self.woken = list(touched)
        touched.clear()
        if self._accept_grew or self.accept_changed:
            self.accept_changed, self._accept_grew = self._accept_grew, set()
        out = self._out
        if out:
            self._out = []
            self.stats.datagrams_sent += len(out)
            return out
        return []

    def _touch_all(self) -> None:
        for conn in self.connections.values():
            self.touch(conn)

    def _collect(self, conn: Connection, now: float) -> None:
        addr = conn.remote_address
        assert addr is not None
        try:
            datagrams = conn.datagrams_to_send(now)
        except Exception as exc:
            self._fail(conn, exc, now)
            return
        room = self._unvalidated.get(conn) if self._unvalidated else None
        if room is None:
            for data in datagrams:
                self._out.append((data, addr))
            return
        for data in datagrams:
            if conn.state not in SYNCHRONIZED:
                fitted = self._fit(data, room[1])
                if fitted is None:
                    continue
                if len(fitted) > room[0]:
                    self.stats.amplification_drops += 1
                    continue
                room[0] -= len(fitted)
                data = fitted
            self._out.append((data, addr))

    def _arm_touched(self) -> None:
        """Remember each unarmed connection's deadline; a new heap entry only if it moved
        earlier than its live one."""
        unarmed, deadlines, entries = self._unarmed, self._deadline, self._entry
        for conn in unarmed:
            try:
                deadline = conn.next_timer()
            except Exception as exc:
                self._fail(conn, exc, self._now)
                deadline = None
            if deadline is None or conn.state is State.CLOSED:
                deadlines.pop(conn, None)
                entries.pop(conn, None)  # its heap entry, if any, is now stale
                continue
            deadlines[conn] = deadline
            entry = entries.get(conn)
            if entry is None or deadline < entry[0]:
                self._push(conn, deadline)
        unarmed.clear()

    def _push(self, conn: Connection, deadline: float) -> None:
        n = next(self._tiebreak)
        self._entry[conn] = (deadline, n)
        heap = self._timers
        heapq.heappush(heap, (deadline, n, conn))
        if len(heap) > 2 * len(self._entry) + 64:
            # Mostly stale entries: rebuild from the live ones (amortized O(1) per push).
            heap[:] = [(t, i, c) for c, (t, i) in self._entry.items()]
            heapq.heapify(heap)

    def _settle(self, now: float) -> None:
        """For the touched connections: move handshaken passive ones to their accept queue,
        forget closed ones. RFC 7413 4.2.2: one that took data from its SYN (Fast Open) is
        accepted in SYN-RECEIVED."""
        pending = self._pending_of
        for conn in self._touched:
            if conn.fastopen is not None:
                _fastopen.settle(conn)
            lst = pending.get(conn) if pending else None
            if lst is not None and (conn.state in SYNCHRONIZED or _fastopen.accept_early(conn)):
                del self._pending_of[conn]
                self._unvalidated.pop(conn, None)
                lst.remove_pending(conn)
                lst.accept_queue.append(conn)
                self._accept_grew.add(conn.local_port)
            elif conn.state is State.CLOSED:
                self._forget(conn)

    def _forget(self, conn: Connection) -> None:
        """Remove ``conn`` from the demultiplexer, its listener and the timers."""
        addr = conn.remote_address
        assert addr is not None
        key = (addr, conn.remote_port, conn.local_port)
        if self.connections.get(key) is conn:
            del self.connections[key]
        lst = self._pending_of.pop(conn, None)
        if lst is not None:
            lst.remove_pending(conn)
        self._unvalidated.pop(conn, None)
        self._deadline.pop(conn, None)
        self._entry.pop(conn, None)

    # ------------------------------------------------------------ failure isolation

    def _abort(self, conn: Connection, now: float, error: Exception | None) -> None:
        self.touch(conn)
        try:
            conn.abort(now, error=error)
        except Exception as exc:
            self._fail(conn, exc, now)

    def _fail(self, conn: Connection, exc: Exception, now: float) -> None:
        """The core raised inside ``conn``: abort it alone, with the exception as the cause."""
        self.stats.connection_failures += 1
        log.error(
            "utcp failed inside connection %s:%d > %s:%d; aborting that connection only",
            self.address[0],
            conn.local_port,
            conn.remote_address,
            conn.remote_port,
            exc_info=exc,
        )
        error = ConnectionAbortedError(f"utcp failed inside this connection: {exc!r}")
        error.__cause__ = exc
        self.touch(conn)
        try:
            conn.abort(now, error=error)
            rst = conn.datagrams_to_send(now)  # RFC 9293 3.10.5: the peer hears a RST
        except Exception:
            # Too broken for an orderly abort: close it without a RST, so the peer finds out
            # by its own timers or by the RST our next answer to it draws.
            rst = []
            conn.error = conn.error or error
            conn.state = State.CLOSED
        addr = conn.remote_address
        assert addr is not None
        self._out.extend((data, addr) for data in rst)
        self._forget(conn)
