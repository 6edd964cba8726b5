"""Scale and failure isolation of one endpoint: the cost of an event does not grow with the
idle connections beside it, a failure inside one connection fails that connection alone, and
the endpoint's own failure modes (see the ``utcp._endpoint`` docstring) fail cleanly."""

from __future__ import annotations

import hashlib
import logging
import random
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

import utcp
from utcp import Config, State, UtcpStream
from utcp._connection import Connection
from utcp._endpoint import Endpoint
from utcp._stream import UtcpStream as _Stream
from utcp.testing import LinkConfig, TrioNetwork

DELAY = 0.005
SERVER: tuple[str, int] = ("198.18.0.2", 443)
CLIENT: tuple[str, int] = ("198.18.0.1", 40000)
# Keepalive off: idle connections stay silent, whatever the defaults become.
QUIET = Config(keepalive=False, nodelay=True)

# Every method through which the host or the endpoint looks at a connection.
CORE_ENTRY_POINTS = ("receive_segment", "handle_timer", "datagrams_to_send", "next_timer")


def count_calls(
    monkeypatch: pytest.MonkeyPatch, cls: type, names: tuple[str, ...], counts: Counter[str]
) -> None:
    for name in names:
        original = getattr(cls, name)

        def wrapper(
            self: object, *args: Any, _name: str = name, _f: Callable[..., Any] = original
        ) -> Any:
            counts[_name] += 1
            return _f(self, *args)

        monkeypatch.setattr(cls, name, wrapper)


async def open_many(
    client_ep: Endpoint, listener: utcp.UtcpListener, n: int, parallel: int = 50
) -> tuple[list[UtcpStream], list[UtcpStream]]:
    """``n`` connections from ``client_ep`` to ``listener``, ``parallel`` at a time."""
    clients: list[UtcpStream] = []
    servers: list[UtcpStream] = []
    left = [n]

    async def opener() -> None:
        while left[0] > 0:
            left[0] -= 1
            clients.append(await utcp.connect_on(client_ep, SERVER))

    async def acceptor() -> None:
        while len(servers) < n:
            servers.append(await listener.accept())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(acceptor)
        for _ in range(parallel):
            nursery.start_soon(opener)
    return clients, servers


async def echo_round(client: UtcpStream, server: UtcpStream, size: int = 64) -> None:
    payload = b"x" * size
    await client.send_all(payload)
    got = b""
    while len(got) < size:
        got += await server.receive_some(size - len(got))
    await server.send_all(got)
    got = b""
    while len(got) < size:
        got += await client.receive_some(size - len(got))
    assert got == payload


async def calls_per_echo(monkeypatch: pytest.MonkeyPatch, idle: int) -> dict[str, int]:
    """Calls into connections (and stream wake-ups) during 20 echoes on one active
    connection, with ``idle`` established connections open on the same two endpoints."""
    net = TrioNetwork(seed=1, link=LinkConfig(delay=DELAY))
    server_ep = net.endpoint(SERVER, config=QUIET)
    client_ep = net.endpoint(CLIENT, config=QUIET)
    try:
        listener = await utcp.listen_on(server_ep)
        active_c, active_s = await open_many(client_ep, listener, 1)
        idle_c, idle_s = await open_many(client_ep, listener, idle)
        assert len(server_ep.host.connections) == idle + 1
        assert all(s.conn.state is State.ESTABLISHED for s in idle_c + idle_s)
        await trio.sleep(1.0)  # delayed ACKs and every other pending timer are done
        counts: Counter[str] = Counter()
        with monkeypatch.context() as patch:
            count_calls(patch, Connection, CORE_ENTRY_POINTS, counts)
            count_calls(patch, _Stream, ("_on_events",), counts)
            for _ in range(20):
                await echo_round(active_c[0], active_s[0])
        return dict(counts)
    finally:
        await client_ep.aclose()
        await server_ep.aclose()
        net.close()


async def test_connections_touched_per_event_do_not_grow_with_idle_connections(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    few = await calls_per_echo(monkeypatch, 10)
    many = await calls_per_echo(monkeypatch, 1000)
    assert few["receive_segment"] > 0 and few["_on_events"] > 0  # the counters count
    # The same echoes cost the same calls into the cores with 1,000 idle connections as
    # with 10: no timer query, flush or wake-up walks the idle ones.
    assert many == few
    assert sum(few.values()) < 20 * 40


# ------------------------------------------------------------------ failure isolation


def random_data(seed: int, size: int = 200_000) -> bytes:
    return random.Random(seed).randbytes(size)


async def upload(stream: UtcpStream, data: bytes, results: dict[int, str], key: int) -> None:
    await stream.send_all(data)
    await stream.send_eof()
    results[key] = hashlib.sha256(data).hexdigest()


async def download(stream: UtcpStream, results: dict[int, str], key: int) -> None:
    h = hashlib.sha256()
    while data := await stream.receive_some():
        h.update(data)
    results[key] = h.hexdigest()


async def test_a_connection_failing_inside_the_core_fails_alone(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    net = TrioNetwork(seed=2, link=LinkConfig(delay=DELAY))
    server_ep = net.endpoint(SERVER)
    client_ep = net.endpoint(CLIENT)
    try:
        listener = await utcp.listen_on(server_ep)
        clients, servers = await open_many(client_ep, listener, 11, parallel=11)
        by_port = {s.conn.remote_port: s for s in servers}
        victim = servers[0].conn
        victim_client = next(c for c in clients if c.conn.local_port == victim.remote_port)
        others = [c for c in clients if c is not victim_client]

        original = Connection.receive_segment
        bug = RuntimeError("a bug in the core")

        def faulty(self: Connection, seg: object, now: float) -> None:
            if self is victim and self.stats.segments_received > 3:
                raise bug
            original(self, seg, now)  # type: ignore[arg-type]

        monkeypatch.setattr(Connection, "receive_segment", faulty)
        sent: dict[int, str] = {}
        received: dict[int, str] = {}
        caplog.set_level(logging.ERROR, logger="utcp.host")
        with trio.fail_after(600):
            async with trio.open_nursery() as nursery:
                for i, c in enumerate(others):
                    nursery.start_soon(upload, c, random_data(i), sent, i)
                    nursery.start_soon(download, by_port[c.conn.local_port], received, i)

                async def victim_side() -> None:
                    with pytest.raises(trio.BrokenResourceError) as info:
                        await download(servers[0], received, -1)
                    cause = info.value.__cause__
                    assert isinstance(cause, ConnectionAbortedError)
                    assert cause.__cause__ is bug

                nursery.start_soon(victim_side)
                with pytest.raises(trio.BrokenResourceError) as info:
                    await upload(victim_client, random_data(99, 2_000_000), sent, -1)
                assert isinstance(info.value.__cause__, ConnectionResetError)  # our RST
        assert sorted(sent) == sorted(received) == list(range(10))
        assert sent == received  # sha256 of each of the 10 transfers, both ends
        assert server_ep.host.stats.connection_failures == 1
        records = [r for r in caplog.records if r.name == "utcp.host"]
        assert len(records) == 1 and records[0].exc_info is not None
        assert not server_ep.closed and not client_ep.closed
        assert victim not in server_ep.host.connections.values()
    finally:
        await client_ep.aclose()
        await server_ep.aclose()
        net.close()


# ------------------------------------------------------------------ the endpoint's own failures


async def broken_endpoint(
    break_it: Callable[[Endpoint], None], expected: type[BaseException]
) -> None:
    """Three connections on one server endpoint; ``break_it`` breaks the endpoint itself:
    every stream raises BrokenResourceError chained to the failure, accept raises too."""
    net = TrioNetwork(seed=3, link=LinkConfig(delay=DELAY))
    server_ep = net.endpoint(SERVER)
    client_ep = net.endpoint(CLIENT)
    try:
        listener = await utcp.listen_on(server_ep)
        _clients, servers = await open_many(client_ep, listener, 3, parallel=3)
        errors: list[BaseException] = []

        async def reader(stream: UtcpStream) -> None:
            with pytest.raises(trio.BrokenResourceError) as info:
                await stream.receive_some()
            errors.append(info.value)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for s in servers:
                    nursery.start_soon(reader, s)
                await trio.sleep(0.1)
                break_it(server_ep)
                with pytest.raises(trio.BrokenResourceError):
                    await listener.accept()
        assert server_ep.closed
        assert len(errors) == 3
        for err in errors:
            assert isinstance(err.__cause__, ConnectionAbortedError)
            assert isinstance(err.__cause__.__cause__, expected)
        with pytest.raises(trio.BrokenResourceError):
            await servers[0].send_all(b"x")
    finally:
        await client_ep.aclose()
        await server_ep.aclose()
        net.close()


def wake_io_task(ep: Endpoint) -> None:
    """Hand the endpoint's simulated socket a datagram, so its I/O task runs."""
    ep.transport._inbox.append((b"", CLIENT))  # type: ignore[attr-defined]
    ep.transport._readable.unpark_all()  # type: ignore[attr-defined]


async def test_a_socket_error_fails_every_connection_of_the_endpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def fail_socket(ep: Endpoint) -> None:
        def recv_batch(limit: int) -> list[tuple[bytes, tuple[str, int]]]:
            raise OSError(5, "input/output error")

        ep.transport.recv_batch = recv_batch  # type: ignore[method-assign]
        wake_io_task(ep)

    await broken_endpoint(fail_socket, OSError)


async def test_a_transport_closed_under_the_endpoint_fails_its_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    await broken_endpoint(lambda ep: ep.transport.close(), trio.ClosedResourceError)


async def test_a_bug_outside_any_connection_fails_the_endpoint_cleanly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def break_host(ep: Endpoint) -> None:
        def receive_datagrams(batch: object, now: float) -> None:
            raise KeyError("a bug in demultiplexing")

        ep.host.receive_datagrams = receive_datagrams  # type: ignore[method-assign]
        wake_io_task(ep)

    await broken_endpoint(break_host, KeyError)


# ------------------------------------------------------------------ SO_REUSEPORT


async def digest_server(listener: utcp.UtcpListener, served: list[str], name: str) -> None:
    """Accept forever; for each connection read to EOF and answer with the sha256."""

    async def handle(stream: UtcpStream) -> None:
        async with stream:
            h = hashlib.sha256()
            while data := await stream.receive_some():
                h.update(data)
            served.append(name)
            await stream.send_all(h.digest())

    async with trio.open_nursery() as nursery:
        while True:
            nursery.start_soon(handle, await listener.accept())


async def digest_client(port: int, seed: int, bad: list[int]) -> None:
    data = random_data(seed, 50_000)
    async with await utcp.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(data)
        await stream.send_eof()
        answer = b""
        while chunk := await stream.receive_some():
            answer += chunk
    if answer != hashlib.sha256(data).digest():
        bad.append(seed)


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT here")
async def test_reuse_port_spreads_connections_over_two_endpoints_on_one_port() -> None:
    (first,) = await utcp.open_tcp_listeners(0, host="127.0.0.1", reuse_port=True)
    port = first.getsockname()[1]
    (second,) = await utcp.open_tcp_listeners(port, host="127.0.0.1", reuse_port=True)
    assert second.getsockname() == ("127.0.0.1", port)
    served: list[str] = []
    bad: list[int] = []
    clients = 0
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(digest_server, first, served, "first")
            nursery.start_soon(digest_server, second, served, "second")
            # The kernel hashes each client's 4-tuple to one socket: 20 clients reach both
            # with overwhelming probability; should they not, more clients make sure.
            for batch in (20, 40, 80):
                async with trio.open_nursery() as batch_nursery:
                    for seed in range(clients, clients + batch):
                        batch_nursery.start_soon(digest_client, port, seed, bad)
                clients += batch
                if set(served) == {"first", "second"}:
                    break
            nursery.cancel_scope.cancel()
    await first.aclose()
    await second.aclose()
    assert bad == []
    assert len(served) == clients  # every connection completed, intact, on one endpoint
    assert set(served) == {"first", "second"}
