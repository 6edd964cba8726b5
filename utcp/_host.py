"""A sans-IO host: many connections and listeners behind one UDP address.

The trio endpoint used to be the natural home of demultiplexing; it lives here instead so
that the very same code runs under the simulated network and over real sockets: the host is
fed ``(datagram, source address)`` batches and ``now``, and answers with ``(datagram,
destination)`` pairs and a timer deadline, like a single connection does.

Demultiplexing key (WIRE.md "Ports"): (peer UDP address, peer TCP port, local TCP port).
"""

from __future__ import annotations

import errno
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ._config import Config
from ._connection import Connection, reset_for
from ._seq import seq_gt
from ._state import SYNCHRONIZED, State
from ._wire import ACK, RST, SYN, Address, DecodeError, Segment, decode_untrusted, encode

log = logging.getLogger("utcp.host")

ConnKey = tuple[Address, int, int]
IssFunction = Callable[[bytes, float], int]

EPHEMERAL_FIRST = 49152
EPHEMERAL_LAST = 65535
# RFC 9293 3.10.7.1 answers strays with RST; rate-limited like BSD's "icmplim" so a flood
# of garbage cannot turn us into an amplifier.
RST_PER_SECOND = 200


@dataclass
class HostStats:
    datagrams_received: int = 0
    datagrams_sent: int = 0
    malformed_drops: int = 0
    checksum_drops: int = 0
    resets_sent: int = 0
    resets_rate_limited: int = 0
    syns_dropped_backlog: int = 0
    drops: dict[str, int] = field(default_factory=dict)


class _Listener:
    __slots__ = ("accept_queue", "backlog", "config", "pending")

    def __init__(self, backlog: int, config: Config) -> None:
        self.backlog = backlog
        self.config = config
        self.pending: set[Connection] = set()
        self.accept_queue: deque[Connection] = deque()


class Host:
    """Connections and listeners sharing one UDP socket address."""

    def __init__(
        self,
        config: Config,
        *,
        address: Address,
        isn_key: bytes,
        iss_function: IssFunction | None = None,
    ) -> None:
        """``isn_key`` is the RFC 6528 secret; ``iss_function(conn_id, now)`` may replace the
        ISN generator (tests use it to start sequence numbers near 2**32)."""
        self.config = config
        self.address = address
        self.ipv6 = ":" in address[0]
        self._isn_key = isn_key
        self._iss_function = iss_function
        self.connections: dict[ConnKey, Connection] = {}
        self.listeners: dict[int, _Listener] = {}
        self.stats = HostStats()
        self._out: list[tuple[bytes, Address]] = []
        self._rst_tokens = float(RST_PER_SECOND)
        self._rst_time = 0.0
        self._next_ephemeral = EPHEMERAL_FIRST

    # ------------------------------------------------------------ application side

    def listen(
        self, port: int | None = None, *, backlog: int = 128, config: Config | None = None
    ) -> int:
        """Accept connections to TCP ``port`` (default: our UDP port). Returns the port."""
        port = self.address[1] if port is None else port
        if port in self.listeners:
            raise OSError(errno.EADDRINUSE, f"TCP port {port} is already listening")
        self.listeners[port] = _Listener(max(1, backlog), config or self.config)
        return port

    def unlisten(self, port: int, now: float) -> None:
        """Stop listening; connections not yet accepted are reset."""
        lst = self.listeners.pop(port, None)
        if lst is None:
            return
        for conn in [*lst.pending, *lst.accept_queue]:
            conn.abort(now)

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
    ) -> Connection:
        """Active open towards ``remote`` (TCP port defaults to its UDP port)."""
        rport = remote[1] if remote_port is None else remote_port
        lport = self._pick_local_port(remote, rport) if local_port is None else local_port
        key = (remote, rport, lport)
        if key in self.connections:
            raise OSError(errno.EADDRINUSE, f"connection {key} already exists")
        conn = self._new_connection(config or self.config, remote, rport, lport, now)
        self.connections[key] = conn
        conn.connect(now)
        return conn

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

    def _new_connection(
        self, config: Config, remote: Address, rport: int, lport: int, now: float
    ) -> Connection:
        conn_id = f"{self.address[0]}|{lport}|{remote[0]}|{remote[1]}|{rport}".encode()
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
        return conn

    # ------------------------------------------------------------ input

    def receive_datagrams(
        self, batch: Sequence[tuple[bytes | memoryview, Address]], now: float
    ) -> None:
        """Decode, demultiplex and feed a batch. Malformed datagrams are dropped and counted."""
        for data, addr in batch:
            self.stats.datagrams_received += 1
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

    def _demux(self, seg: Segment, addr: Address, now: float) -> None:
        key = (addr, seg.src_port, seg.dst_port)
        conn = self.connections.get(key)
        if conn is not None and conn.state is State.TIME_WAIT and self._reuses_time_wait(conn, seg):
            conn.abort(now)
            self._collect(conn, now)
            del self.connections[key]
            conn = None
        if conn is not None:
            conn.receive_segment(seg, now)
            return
        lst = self.listeners.get(seg.dst_port)
        if lst is not None and not seg.flags & (SYN | ACK | RST):
            # RFC 9293 3.10.7.2 fourth: LISTEN drops a segment with neither SYN nor ACK
            # (nor RST) without an answer.
            self._count_drop("no SYN in LISTEN")
            return
        if lst is not None and seg.flags & SYN and not seg.flags & (ACK | RST):
            if len(lst.pending) + len(lst.accept_queue) >= lst.backlog:
                self.stats.syns_dropped_backlog += 1
                return
            conn = self._new_connection(lst.config, addr, seg.src_port, seg.dst_port, now)
            conn.listen()
            conn.receive_segment(seg, now)
            self.connections[key] = conn
            lst.pending.add(conn)
            return
        # RFC 9293 3.10.7.1: no connection: answer anything but a RST with a RST.
        self._count_drop("no connection")
        rst = reset_for(seg)
        if rst is not None:
            self._send_rst(rst, addr, now)

    @staticmethod
    def _reuses_time_wait(conn: Connection, seg: Segment) -> bool:
        # RFC 9293 3.10.7.4 / RFC 6191: a new SYN above the old connection's sequence space
        # (or with a newer timestamp) may reopen a connection in TIME-WAIT.
        if not seg.flags & SYN or seg.flags & (ACK | RST):
            return False
        if conn.ts_ok and seg.timestamps is not None:
            return seq_gt(seg.timestamps[0], conn.ts_recent)
        return seq_gt(seg.seq, conn.rcv_nxt)

    def _send_rst(self, rst: Segment, addr: Address, now: float) -> None:
        self._rst_tokens = min(
            float(RST_PER_SECOND), self._rst_tokens + (now - self._rst_time) * RST_PER_SECOND
        )
        self._rst_time = now
        if self._rst_tokens < 1:
            self.stats.resets_rate_limited += 1
            return
        self._rst_tokens -= 1
        self.stats.resets_sent += 1
        self._out.append((encode(rst), addr))

    def _count_drop(self, reason: str) -> None:
        self.stats.drops[reason] = self.stats.drops.get(reason, 0) + 1

    # ------------------------------------------------------------ timers and output

    def next_timer(self) -> float | None:
        best: float | None = None
        for conn in self.connections.values():
            t = conn.next_timer()
            if t is not None and (best is None or t < best):
                best = t
        return best

    def handle_timer(self, now: float) -> None:
        for conn in list(self.connections.values()):
            t = conn.next_timer()
            if t is not None and t <= now:
                conn.handle_timer(now)
        self._settle(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Every (datagram, destination) pair due now, from all connections."""
        for conn in list(self.connections.values()):
            self._collect(conn, now)
        self._settle(now)
        out, self._out = self._out, []
        self.stats.datagrams_sent += len(out)
        return out

    def _collect(self, conn: Connection, now: float) -> None:
        addr = conn.remote_address
        assert addr is not None
        for data in conn.datagrams_to_send(now):
            self._out.append((data, addr))

    def _settle(self, now: float) -> None:
        """Move handshaken passive connections to the accept queue; forget closed ones."""
        for lst in self.listeners.values():
            for conn in list(lst.pending):
                if conn.state in SYNCHRONIZED:
                    lst.pending.discard(conn)
                    lst.accept_queue.append(conn)
                elif conn.state is State.CLOSED:
                    lst.pending.discard(conn)
        dead = [k for k, c in self.connections.items() if c.state is State.CLOSED]
        for key in dead:
            conn = self.connections.pop(key)
            self._collect(conn, now)  # a final RST may still be queued
