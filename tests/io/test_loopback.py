"""The trio layer over real UDP sockets on 127.0.0.1 and ::1."""

from __future__ import annotations

import hashlib
import random
import socket
import struct
import sys
from functools import partial

import pytest
import trio
import trio.testing

import utcp
from utcp import Config, State

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup

MB = 1 << 20


def payload(seed: int, size: int = MB) -> bytes:
    return random.Random(seed).randbytes(size)


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < size:
        chunk = await stream.receive_some(size - got)
        if not chunk:
            raise AssertionError(f"EOF after {got} of {size} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


async def receive_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    chunks: list[bytes] = []
    while chunk := await stream.receive_some():
        chunks.append(chunk)
    return b"".join(chunks)


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


# ------------------------------------------------------------------ many connections


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        pytest.param(
            "::1", marks=pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback")
        ),
    ],
)
async def test_100_connections_one_server_port_1mb_both_ways(host: str) -> None:
    """100 concurrent connections to one UDP port; half the clients share one endpoint,
    half have their own. Every byte is checked with sha256 at both ends."""
    n = 100
    server_got: dict[int, str] = {}

    async def handler(stream: utcp.UtcpStream) -> None:
        (ident,) = struct.unpack("!I", await receive_exactly(stream, 4))
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                await stream.send_all(payload(10_000 + ident))
                await stream.send_eof()

            nursery.start_soon(send)
            server_got[ident] = hashlib.sha256(await receive_to_eof(stream)).hexdigest()
        await stream.aclose()

    client_got: dict[int, str] = {}
    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(utcp.serve_tcp, handler, 0, host=host))
            port = listeners[0].getsockname()[1]
            shared = await utcp.open_endpoint((host, 0))

            async def client(ident: int) -> None:
                if ident % 2:
                    stream = await utcp.open_tcp_stream(host, port, endpoint=shared)
                else:
                    stream = await utcp.open_tcp_stream(host, port)
                async with stream:
                    await stream.send_all(struct.pack("!I", ident))
                    async with trio.open_nursery() as inner:

                        async def send() -> None:
                            await stream.send_all(payload(ident))
                            await stream.send_eof()

                        inner.start_soon(send)
                        data = await receive_to_eof(stream)
                    client_got[ident] = hashlib.sha256(data).hexdigest()

            async with trio.open_nursery() as clients:
                for ident in range(n):
                    clients.start_soon(client, ident)
            server_port_users = {lst.getsockname() for lst in listeners}
            assert len(server_port_users) == 1  # every connection shared the one port
            # A client is done when it has the server's EOF; its own last bytes may still be
            # on their way to the server.
            while len(server_got) < n:
                await trio.sleep(0.01)
            await shared.aclose()
            nursery.cancel_scope.cancel()

    for ident in range(n):
        assert server_got[ident] == hashlib.sha256(payload(ident)).hexdigest()
        assert client_got[ident] == hashlib.sha256(payload(10_000 + ident)).hexdigest()


# ------------------------------------------------------------------ connection failures


async def test_refused_connection_is_fast() -> None:
    # A bound UDP port whose endpoint has no listener answers the SYN with a RST.
    endpoint = await utcp.open_endpoint(("127.0.0.1", 0))
    try:
        port = endpoint.local_address[1]
        start = trio.current_time()
        with pytest.raises(ConnectionRefusedError):
            await utcp.open_tcp_stream("127.0.0.1", port)
        assert trio.current_time() - start < 1.0
        assert endpoint.host.stats.resets_sent >= 1
    finally:
        await endpoint.aclose()


async def test_connect_to_silent_port_times_out() -> None:
    # A UDP socket that never answers: the SYN is retransmitted until connect_timeout.
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        await silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        config = Config(connect_timeout=1.5, initial_rto=0.2)
        start = trio.current_time()
        with pytest.raises(TimeoutError):
            await utcp.open_tcp_stream("127.0.0.1", port, config=config)
        elapsed = trio.current_time() - start
        assert 1.5 <= elapsed < 3.0
        received = 0
        with trio.move_on_after(0.05):
            while True:
                await silent.recv(2048)
                received += 1
        assert received >= 3  # the SYN and its retransmissions reached the port


# ------------------------------------------------------------------ cancellation


async def echo_handler(stream: utcp.UtcpStream) -> None:
    async with stream:
        while data := await stream.receive_some():
            await stream.send_all(data)


async def assert_endpoint_healthy(endpoint: utcp.Endpoint, port: int) -> None:
    stream = await utcp.open_tcp_stream("127.0.0.1", port, endpoint=endpoint)
    async with stream:
        data = payload(7, 200_000)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, data)
            assert await receive_exactly(stream, len(data)) == data


async def test_cancelled_connect_send_receive_leave_endpoint_healthy() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(utcp.serve_tcp, echo_handler, 0, host="127.0.0.1")
            )
            port = listeners[0].getsockname()[1]
            endpoint = await utcp.open_endpoint(("127.0.0.1", 0))

            # connect, cancelled while the SYN is unanswered (a silent port).
            with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
                await silent.bind(("127.0.0.1", 0))
                with trio.move_on_after(0.3) as scope:
                    await utcp.open_tcp_stream(
                        "127.0.0.1", silent.getsockname()[1], endpoint=endpoint
                    )
                assert scope.cancelled_caught
            assert not endpoint.host.connections  # the aborted attempt left no TCB
            await assert_endpoint_healthy(endpoint, port)

            # send_all, cancelled while blocked on a full window (nobody reads).
            (quiet_listener,) = await utcp.open_tcp_listeners(0, host="127.0.0.1")
            quiet_port = quiet_listener.getsockname()[1]
            stream = await utcp.open_tcp_stream(
                "127.0.0.1", quiet_port, endpoint=endpoint, config=Config(send_buffer_size=4096)
            )
            peer = await quiet_listener.accept()
            with trio.move_on_after(0.3) as scope:
                await stream.send_all(b"x" * (8 * MB))
            assert scope.cancelled_caught
            # The stream itself stays usable after a cancelled send_all (trio's contract
            # only allows it to be broken; utcp keeps what was queued and goes on).
            await assert_endpoint_healthy(endpoint, port)

            # receive_some, cancelled while waiting for data that never comes.
            with trio.move_on_after(0.2) as scope:
                await peer.receive_some(1)  # drains what send_all queued...
                await stream.receive_some(10)  # ...while this waits for nothing
            assert scope.cancelled_caught
            await assert_endpoint_healthy(endpoint, port)

            await stream.aclose()
            await peer.aclose()
            await quiet_listener.aclose()
            await endpoint.aclose()
            nursery.cancel_scope.cancel()


async def test_receive_some_is_a_checkpoint_on_every_path_and_loses_nothing() -> None:
    # receive_some checks cancellation first and yields once: by parking when it must wait,
    # otherwise at the end with its outcome settled (as trio's socket streams do).
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            (listener,) = await utcp.open_tcp_listeners(0, host="127.0.0.1")
            port = listener.getsockname()[1]
            client = await utcp.open_tcp_stream("127.0.0.1", port)
            server = await listener.accept()
            await client.send_all(b"ready")
            while not server.conn.readable:
                await trio.sleep(0.01)
            with trio.testing.assert_checkpoints():
                assert await server.receive_some(100) == b"ready"
            # Cancelled before it starts, with data waiting: Cancelled, and the data stays.
            await client.send_all(b"kept")
            while not server.conn.readable:
                await trio.sleep(0.01)
            with trio.CancelScope() as scope:
                scope.cancel()
                await server.receive_some(100)
                pytest.fail("a cancelled receive_some returned")
            assert await server.receive_some(100) == b"kept"
            # Waiting: the park is the checkpoint; the data that wakes it is returned.
            nursery.start_soon(client.send_all, b"later")
            with trio.testing.assert_checkpoints():
                assert await server.receive_some(100) == b"later"
            await client.send_eof()
            with trio.testing.assert_checkpoints():
                assert await server.receive_some(100) == b""
            await server.aclose()
            with trio.testing.assert_checkpoints(), pytest.raises(trio.ClosedResourceError):
                await server.receive_some(100)
            await client.aclose()
            await listener.aclose()


async def test_send_all_sends_before_it_yields_and_is_a_checkpoint() -> None:
    # Like trio's socket streams, send_all puts its segments on the wire and then yields:
    # when this task's step ends for the first time inside the call (its first yield), the
    # datagram has already been sent.
    with trio.fail_after(30):
        (listener,) = await utcp.open_tcp_listeners(0, host="127.0.0.1")
        client = await utcp.open_tcp_stream("127.0.0.1", listener.getsockname()[1])
        server = await listener.accept()
        stats = client.endpoint.transport.stats
        me = trio.lowlevel.current_task()
        at_yield: list[int] = []

        class StepEnds(trio.abc.Instrument):
            def after_task_step(self, task: trio.lowlevel.Task) -> None:
                if task is me:
                    at_yield.append(stats.datagrams_sent)

        before = stats.datagrams_sent
        instrument = StepEnds()
        trio.lowlevel.add_instrument(instrument)
        try:
            with trio.testing.assert_checkpoints():
                await client.send_all(b"x" * 64)
        finally:
            trio.lowlevel.remove_instrument(instrument)
        assert at_yield and at_yield[0] == before + 1
        assert await server.receive_some(100) == b"x" * 64
        await client.aclose()
        with trio.testing.assert_checkpoints(), pytest.raises(trio.ClosedResourceError):
            await client.send_all(b"late")
        await server.aclose()
        await listener.aclose()


# ------------------------------------------------------------------ no task outlives


class TaskTracker(trio.abc.Instrument):
    def __init__(self) -> None:
        self.live: dict[trio.lowlevel.Task, str] = {}

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.live[task] = task.name

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.live.pop(task, None)

    def utcp_tasks(self) -> list[str]:
        return [name for name in self.live.values() if "utcp" in name]


async def test_closing_listener_and_endpoint_leaves_no_task() -> None:
    tracker = TaskTracker()
    trio.lowlevel.add_instrument(tracker)
    try:
        (listener,) = await utcp.open_tcp_listeners(0, host="127.0.0.1")
        port = listener.getsockname()[1]
        client_ep = await utcp.open_endpoint(("127.0.0.1", 0))
        assert len(tracker.utcp_tasks()) == 2
        own: list[utcp.UtcpStream] = []

        async def connect_own() -> None:
            own.append(await utcp.open_tcp_stream("127.0.0.1", port))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(connect_own)
            server_side = await listener.accept()
        client = await utcp.open_tcp_stream("127.0.0.1", port, endpoint=client_ep)
        await listener.accept()
        assert len(tracker.utcp_tasks()) == 3  # listener, shared client, own client endpoint
        # Closing the listener alone does not end its endpoint: accepted streams still use it.
        await listener.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await listener.accept()
        await server_side.aclose()
        await client_ep.aclose()
        with pytest.raises(trio.BrokenResourceError):
            await client.send_all(b"x")
        # Endpoint.aclose() aborts what is left, so every endpoint winds down.
        for conn_ep in {client.endpoint, server_side.endpoint, own[0].endpoint}:
            await conn_ep.aclose()
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(10):
            if not tracker.utcp_tasks():
                break
            await trio.sleep(0.01)
        assert tracker.utcp_tasks() == []
    finally:
        trio.lowlevel.remove_instrument(tracker)


async def test_auto_endpoints_end_after_their_connections_close() -> None:
    # Endpoints made by open_tcp_stream/open_tcp_listeners end on their own once every
    # stream and listener on them is closed and their connections are gone (a connection in
    # TIME-WAIT keeps its endpoint answering: MSL is short here so that ends quickly).
    tracker = TaskTracker()
    trio.lowlevel.add_instrument(tracker)
    config = Config(msl=0.05)
    try:
        (listener,) = await utcp.open_tcp_listeners(0, host="127.0.0.1", config=config)
        port = listener.getsockname()[1]
        client = await utcp.open_tcp_stream("127.0.0.1", port, config=config)
        server = await listener.accept()
        await listener.aclose()
        await client.send_eof()
        assert await server.receive_some() == b""
        await server.aclose()
        assert await client.receive_some() == b""
        await client.aclose()
        assert client.conn.state is State.TIME_WAIT  # the active closer
        assert len(tracker.utcp_tasks()) >= 1
        with trio.fail_after(5):
            while tracker.utcp_tasks():
                await trio.sleep(0.02)
        assert client.endpoint.closed and server.endpoint.closed
    finally:
        trio.lowlevel.remove_instrument(tracker)


# ------------------------------------------------------------------ misuse and options


async def test_malformed_datagrams_are_dropped_and_counted() -> None:
    (listener,) = await utcp.open_tcp_listeners(0, host="127.0.0.1")
    try:
        addr = listener.getsockname()
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
            for data in (b"", b"\x00" * 5, b"\xff" * 40, bytes(range(30))):
                await junk.sendto(data, addr)
        client = await utcp.open_tcp_stream("127.0.0.1", addr[1])
        server = await listener.accept()
        await client.send_all(b"still fine")
        assert await server.receive_some() == b"still fine"
        stats = listener.endpoint.host.stats
        assert stats.malformed_drops + stats.checksum_drops >= 3
        await client.aclose()
        await server.aclose()
    finally:
        await listener.aclose()


async def test_busy_and_closed_errors() -> None:
    (listener,) = await utcp.open_tcp_listeners(0, host="127.0.0.1")
    async with listener:
        client = await utcp.open_tcp_stream("127.0.0.1", listener.getsockname()[1])
        server = await listener.accept()
        with pytest.raises(ExceptionGroup) as info:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.receive_some, 10)
                nursery.start_soon(client.receive_some, 10)
        busy, rest = info.value.split(trio.BusyResourceError)
        assert busy is not None and rest is None
        await client.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await client.send_all(b"x")
        with pytest.raises(trio.ClosedResourceError):
            await client.receive_some(1)
        await server.aclose()


async def test_peer_reset_is_broken_resource_with_cause() -> None:
    (listener,) = await utcp.open_tcp_listeners(0, host="127.0.0.1")
    async with listener:
        client = await utcp.open_tcp_stream("127.0.0.1", listener.getsockname()[1])
        server = await listener.accept()
        server.conn.abort(trio.current_time())
        server.endpoint.drive(conn=server.conn)  # an application call: name it
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError) as info:
            await client.receive_some(1)
        assert isinstance(info.value.__cause__, ConnectionResetError)
        await client.aclose()
        await server.aclose()


async def test_socket_options_and_statistics() -> None:
    (listener,) = await utcp.open_tcp_listeners(0, host="127.0.0.1")
    async with listener:
        client = await utcp.open_tcp_stream("127.0.0.1", listener.getsockname()[1])
        server = await listener.accept()
        assert client.getpeername() == listener.getsockname()
        assert client.getsockname() == server.getpeername()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        assert client.conn.keepalive and client.conn.keepalive_idle == 30
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 5000)
        assert client.conn.user_timeout == 5.0
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"newreno")
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION) == b"newreno"
        with pytest.raises(OSError):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"no-such-cc")
        data = payload(3, 300_000)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, data)
            assert await receive_exactly(server, len(data)) == data
        with trio.fail_after(5):  # the last ACK may still be on its way
            while client.conn.bytes_in_flight:
                await trio.sleep(0.001)
        stats = client.statistics()
        assert stats.state == "ESTABLISHED"
        assert stats.bytes_acked == len(data)
        assert stats.srtt is not None and 0 < stats.srtt < 1
        assert stats.segments_sent >= len(data) // stats.mss
        assert server.statistics().bytes_received == len(data)
        await client.aclose()
        await server.aclose()
