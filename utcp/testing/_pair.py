"""Two sans-IO hosts joined by a ``SimNetwork``, with helpers to connect and move data.

``HostPair`` is what protocol tests and the simulated benchmarks stand on: a client host
and a listening server host, a seeded network between them, and ``transfer()``, which
pushes known bytes both ways, optionally reads slowly at one end, and reports digests,
timings and counters.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from .._config import Config
from .._connection import Connection
from .._events import StateChanged
from .._fastopen import ClientCache
from .._host import Host
from .._state import State
from .._wire import Address
from ._network import LinkConfig, PcapSink, SimNetwork

CLIENT_ADDR: Address = ("198.18.0.1", 40000)
SERVER_ADDR: Address = ("198.18.0.2", 443)


class _AppClock:
    """A node with no traffic: it only wakes the application at chosen virtual times."""

    def __init__(self) -> None:
        self.deadline: float | None = None

    def receive_datagrams(self, batch: object, now: float) -> None:
        return None

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        return []

    def next_timer(self) -> float | None:
        return self.deadline

    def handle_timer(self, now: float) -> None:
        self.deadline = None


@dataclass
class Side:
    """One end's application view during a transfer."""

    conn: Connection
    to_send: bytes
    sent: int = 0
    received: bytearray = field(default_factory=bytearray)
    shut: bool = False
    eof_time: float | None = None

    @property
    def done_sending(self) -> bool:
        return self.shut

    def digest_sent(self) -> str:
        return hashlib.sha256(self.to_send).hexdigest()

    def digest_received(self) -> str:
        return hashlib.sha256(self.received).hexdigest()


@dataclass
class TransferResult:
    client: Side
    server: Side
    elapsed: float  # virtual seconds from the first byte queued to both EOFs

    @property
    def intact(self) -> bool:
        """Both directions delivered exactly the bytes sent (sha256 at both ends)."""
        return (
            self.client.digest_sent() == self.server.digest_received()
            and self.server.digest_sent() == self.client.digest_received()
        )


def pair_host(config: Config, **kwargs: Any) -> Host:
    """A host that looks at every connection before each flush and timer query
    (``Host.touch_all``).

    Protocol tests call ``Connection`` methods directly (``conn.send(...)``) without telling
    the host (``Host.touch``); with the two or three connections of a pair, looking at all
    of them keeps those tests simple and their output order what it always was. The trio
    layer touches explicitly, and the scale tests run there. (A flag rather than a subclass:
    the compiled core's classes cannot be subclassed in Python.)"""
    host = Host(config, **kwargs)
    host.touch_all = True
    return host


class HostPair:
    """A client ``Host`` and a listening server ``Host`` over a seeded ``SimNetwork``."""

    def __init__(
        self,
        *,
        seed: int,
        link: LinkConfig | None = None,
        reverse_link: LinkConfig | None = None,
        config: Config | None = None,
        client_config: Config | None = None,
        server_config: Config | None = None,
        client_iss: int | None = None,
        server_iss: int | None = None,
        trace: bool = False,
        pcap: PcapSink | None = None,
    ) -> None:
        base = config or Config()
        self.net = SimNetwork(seed=seed, trace=trace, pcap=pcap)
        self.client = pair_host(
            client_config or base,
            address=CLIENT_ADDR,
            isn_key=seed.to_bytes(8, "big") + b"client--",
            iss_function=(lambda _c, _n: client_iss) if client_iss is not None else None,
            fastopen_cache=ClientCache(),  # each pair starts with no Fast Open cookie
        )
        self.server = pair_host(
            server_config or base,
            address=SERVER_ADDR,
            isn_key=seed.to_bytes(8, "big") + b"server--",
            iss_function=(lambda _c, _n: server_iss) if server_iss is not None else None,
        )
        forward = link or LinkConfig()
        self.net.set_link(CLIENT_ADDR[0], SERVER_ADDR[0], forward)
        self.net.set_link(SERVER_ADDR[0], CLIENT_ADDR[0], reverse_link or forward)
        self.net.attach(CLIENT_ADDR, self.client)
        self.net.attach(SERVER_ADDR, self.server)
        self._clock = _AppClock()
        self.net.attach(("198.19.255.254", 9), self._clock)  # never sent to
        self.server.listen()
        self.state_log: list[tuple[float, str, State, State]] = []

    @property
    def now(self) -> float:
        return self.net.now

    def wake_at(self, deadline: float) -> None:
        """Make sure the simulation stops by ``deadline`` for the application."""
        if self._clock.deadline is None or deadline < self._clock.deadline:
            self._clock.deadline = deadline

    def _watch(self, name: str, conn: Connection) -> None:
        while (ev := conn.next_event()) is not None:
            if isinstance(ev, StateChanged):
                self.state_log.append((self.net.now, name, ev.old, ev.new))

    def connect(self, *, timeout: float = 120.0) -> tuple[Connection, Connection]:
        """Open a connection and run until both ends are ESTABLISHED."""
        client = self.client.connect(SERVER_ADDR, self.net.now)
        accepted: list[Connection] = []

        def ready() -> bool:
            self._watch("client", client)
            if not accepted:
                conn = self.server.accept(SERVER_ADDR[1])
                if conn is not None:
                    accepted.append(conn)
            if accepted:
                self._watch("server", accepted[0])
            return bool(accepted) and client.state is State.ESTABLISHED

        self.net.run(ready, timeout=timeout)
        return client, accepted[0]

    def transfer(
        self,
        client_data: bytes,
        server_data: bytes,
        *,
        connection: tuple[Connection, Connection] | None = None,
        chunk: int = 64 * 1024,
        slow_reader: str | None = None,
        read_size: int = 4096,
        read_interval: float = 0.05,
        timeout: float = 3600.0,
    ) -> TransferResult:
        """Send ``client_data`` one way and ``server_data`` the other, each side shutting
        down its write side when done, and read both to EOF.

        ``slow_reader`` ("client" or "server") makes that end read only ``read_size`` bytes
        every ``read_interval`` virtual seconds, so its window closes and reopens.
        """
        c_conn, s_conn = connection or self.connect()
        start = self.net.now
        sides = {"client": Side(c_conn, client_data), "server": Side(s_conn, server_data)}
        next_read = {"client": start, "server": start}

        def pump(name: str, side: Side) -> None:
            conn, now = side.conn, self.net.now
            while side.sent < len(side.to_send) and conn.send_space:
                side.sent += conn.send(side.to_send[side.sent : side.sent + chunk])
            if side.sent == len(side.to_send) and not side.shut and not conn.closed:
                conn.shutdown(now)
                side.shut = True
            if name == slow_reader:
                if now >= next_read[name]:
                    side.received += conn.receive(read_size)
                    next_read[name] = now + read_interval
                self.wake_at(next_read[name])
            else:
                while conn.readable:
                    side.received += conn.receive(1 << 20)
            if conn.at_eof and side.eof_time is None:
                side.eof_time = now

        def done() -> bool:
            for name, side in sides.items():
                pump(name, side)
                self._watch(name, side.conn)
                if side.conn.error is not None:
                    raise side.conn.error
            return all(s.eof_time is not None for s in sides.values())

        self.net.run(done, timeout=timeout)
        return TransferResult(sides["client"], sides["server"], self.net.now - start)

    def run_until_closed(self, conns: tuple[Connection, ...], *, timeout: float = 600.0) -> None:
        """Run until every connection in ``conns`` reached CLOSED (e.g. past TIME-WAIT)."""
        self.net.run(lambda: all(c.closed for c in conns), timeout=timeout)


def random_payload(seed: int, size: int) -> bytes:
    """Deterministic pseudo-random bytes for a seed (its own RNG, not the global one)."""
    return random.Random(seed).randbytes(size)
