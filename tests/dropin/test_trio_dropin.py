"""Unmodified trio networking code over utcp with ``utcp.install()``: trio's own
``serve_tcp``, ``open_tcp_stream``, ``SocketStream``, ``SocketListener`` and ``SSLStream``."""

from __future__ import annotations

import errno
import hashlib
import random
import socket
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
import trio.testing
from _dropin import MSS, Tls, assert_carried, assert_no_kernel_tcp

import utcp
import utcp.testing
from utcp import Config
from utcp.testing import CLOGGED
from utcp.testing._streams import fill_send_side

PAYLOAD = random.Random(12).randbytes(1_000_000)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()

Handler = Callable[[trio.abc.Stream], Awaitable[None]]


async def echo(stream: trio.abc.Stream) -> None:
    async with stream:
        while data := await stream.receive_some():
            await stream.send_all(data)


async def exchange(stream: trio.abc.Stream) -> str:
    """Send PAYLOAD while reading the echo back; the sha256 of what came back."""
    got = hashlib.sha256()
    received = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, PAYLOAD)
        while received < len(PAYLOAD):
            chunk = await stream.receive_some()
            assert chunk
            got.update(chunk)
            received += len(chunk)
    return got.hexdigest()


async def serve(nursery: trio.Nursery, handler: Handler) -> list[trio.SocketListener]:
    listeners: list[trio.SocketListener] = await nursery.start(
        partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
    )
    return listeners


async def test_trio_serve_tcp_and_open_tcp_stream_echo_over_udp() -> None:
    utcp.install()
    async with trio.open_nursery() as nursery:
        (listener,) = await serve(nursery, echo)
        assert isinstance(listener.socket, utcp.UtcpSocket)
        port = listener.socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert isinstance(stream, trio.SocketStream)
        assert isinstance(stream.socket, utcp.UtcpSocket)
        async with stream:
            assert await exchange(stream) == DIGEST
            await stream.send_eof()
            assert await stream.receive_some() == b""
        assert_no_kernel_tcp(port)
        assert_carried(listener.socket.endpoint, len(PAYLOAD))
        nursery.cancel_scope.cancel()


async def test_trio_echo_over_ipv6_loopback() -> None:
    utcp.install()
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, echo, 0, host="::1"))
        address = listener.socket.getsockname()
        assert listener.socket.family == socket.AF_INET6
        assert len(address) == 4 and address[0] == "::1"  # (host, port, flowinfo, scope_id)
        stream = await trio.open_tcp_stream("::1", address[1])
        async with stream:
            assert stream.socket.getpeername()[:2] == ("::1", address[1])
            await stream.send_all(b"over IPv6")
            assert await stream.receive_some() == b"over IPv6"
        nursery.cancel_scope.cancel()


async def test_trio_ssl_stream_over_utcp(tls: Tls) -> None:
    utcp.install()
    server_ctx = tls.server_context()

    async def tls_echo(stream: trio.abc.Stream) -> None:
        await echo(trio.SSLStream(stream, server_ctx, server_side=True))

    async with trio.open_nursery() as nursery:
        (listener,) = await serve(nursery, tls_echo)
        port = listener.socket.getsockname()[1]
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, tls.client_context(), server_hostname="127.0.0.1")
        async with stream:
            await stream.do_handshake()
            assert await exchange(stream) == DIGEST
        assert_no_kernel_tcp(port)
        assert_carried(listener.socket.endpoint, len(PAYLOAD))
        nursery.cancel_scope.cancel()


async def test_open_stream_to_socket_listener_and_listener_socket() -> None:
    # trio's idioms read listener.socket: on trio's own listeners under install(), and on
    # utcp's listeners directly.
    (own,) = await utcp.open_tcp_listeners(0, host="127.0.0.1")
    async with own:
        assert own.socket.getsockname() == own.getsockname()
        assert own.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    with utcp.installed():
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with listener:
            client = await trio.testing.open_stream_to_socket_listener(listener)
            server = await listener.accept()
            async with client, server:
                await client.send_all(b"ping")
                assert await server.receive_some() == b"ping"
                assert client.socket.getpeername() == server.socket.getsockname()


async def test_happy_eyeballs_cancels_a_silent_attempt_mid_handshake() -> None:
    # The name resolves to a silent address first (nothing answers on 127.0.0.2) and the
    # listener second: trio starts the second attempt after 250 ms, and cancels the first
    # while its SYN is unanswered.
    utcp.install()
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    made: list[utcp.UtcpSocket] = []
    factory = utcp.SocketFactory()

    class Recording(utcp.SocketFactory):
        def socket(self, *args: int) -> trio.socket.SocketType:  # type: ignore[override]
            sock = factory.socket(*args)
            assert isinstance(sock, utcp.UtcpSocket)
            made.append(sock)
            return sock

    class TwoAddresses(trio.abc.HostnameResolver):
        async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):  # type: ignore[no-untyped-def]
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            ]

        async def getnameinfo(self, sockaddr, flags):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    utcp.install(Recording())
    trio.socket.set_custom_hostname_resolver(TwoAddresses())
    async with listener:
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("dual.test", port)
        async with stream:
            server = await listener.accept()
            await stream.send_all(b"x")
            assert await server.receive_some() == b"x"
            await server.aclose()
    assert len(made) == 2
    silent, winner = made
    assert silent.fileno() == -1  # cancelled mid-handshake: closed, as trio's sockets are
    assert winner is stream.socket


async def test_socket_errors_carry_kernel_errnos() -> None:
    # ECONNREFUSED: a bound utcp socket that is not listening answers a SYN with a RST.
    bound = utcp.socket()
    await bound.bind(("127.0.0.1", 0))
    port = bound.getsockname()[1]
    client = utcp.socket()
    with pytest.raises(ConnectionRefusedError) as refused:
        await client.connect(("127.0.0.1", port))
    assert refused.value.errno == errno.ECONNREFUSED
    # EADDRINUSE: the UDP port is taken.
    with pytest.raises(OSError) as in_use:
        await utcp.socket().bind(("127.0.0.1", port))
    assert in_use.value.errno == errno.EADDRINUSE
    bound.close()
    # ETIMEDOUT: nothing ever answers the SYN.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        quick = utcp.socket(config=Config(connect_timeout=0.5, initial_rto=0.2))
        with pytest.raises(TimeoutError) as timed_out:
            await quick.connect(silent.getsockname())
        assert timed_out.value.errno == errno.ETIMEDOUT
    # ENOTCONN / EPIPE before any connection, EBADF after close.
    fresh = utcp.socket()
    with pytest.raises(OSError) as not_connected:
        fresh.getpeername()
    assert not_connected.value.errno == errno.ENOTCONN
    with pytest.raises(OSError) as not_connected_recv:
        await fresh.recv(10)
    assert not_connected_recv.value.errno == errno.ENOTCONN
    with pytest.raises(BrokenPipeError):
        await fresh.send(b"x")
    fresh.close()
    with pytest.raises(OSError) as closed:
        await fresh.recv(10)
    assert closed.value.errno == errno.EBADF


async def test_send_after_shut_wr_is_epipe_and_reset_is_econnreset() -> None:
    listening = utcp.socket()
    await listening.bind(("127.0.0.1", 0))
    listening.listen()
    client = utcp.socket()
    await client.connect(listening.getsockname())
    server, peer = await listening.accept()
    assert peer == client.getsockname()
    client.shutdown(socket.SHUT_WR)
    assert client.did_shutdown_SHUT_WR
    with pytest.raises(BrokenPipeError) as pipe:
        await client.send(b"x")
    assert pipe.value.errno == errno.EPIPE
    assert await server.recv(10) == b""  # the FIN
    # The client closes with unread data: RFC 1122 4.2.2.13, a RST, and the peer sees
    # ECONNRESET.
    await server.send(b"unread")
    with trio.fail_after(5):
        while not client.is_readable():
            await trio.sleep(0.01)
    client.close()
    with trio.fail_after(5), pytest.raises(ConnectionResetError) as reset:
        while True:
            await server.send(b"more")
            await trio.sleep(0.01)
    assert reset.value.errno == errno.ECONNRESET
    server.close()
    listening.close()


async def test_closing_a_stream_closes_its_socket_view() -> None:
    client, server = await utcp.testing.udp_stream_pair()
    sock = client.socket
    assert sock.fileno() > 0 and sock.stream is client
    await client.aclose()
    assert sock.fileno() == -1
    server.socket.close()
    with pytest.raises(trio.ClosedResourceError):
        await server.receive_some()


async def test_filenos_are_distinct_real_descriptors_until_close() -> None:
    socks = [utcp.socket() for _ in range(5)]
    fds = [s.fileno() for s in socks]
    assert len(set(fds)) == 5 and min(fds) > 2
    with socket.socket() as real:  # the kernel never hands out one of ours
        assert real.fileno() not in fds
    for s in socks:
        s.close()
        assert s.fileno() == -1


async def test_socket_stream_defaults_and_options() -> None:
    listening = utcp.socket()
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    assert listening.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    assert listening.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
    await listening.bind(("127.0.0.1", 0))
    listening.listen(5)
    assert listening.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    listener = trio.SocketListener(listening)  # checks SO_ACCEPTCONN and the type
    client = utcp.socket()
    assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # Nagle, as kernel
    await client.connect(listening.getsockname())
    assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    stream = trio.SocketStream(client)  # trio's defaults on a kernel socket
    assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == 16384
    server = await listener.accept()
    # The listener's SO_RCVBUF before listen() sized the accepted connection's buffer.
    assert server.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 65536
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    with pytest.raises(OSError) as unsupported:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    assert unsupported.value.errno == errno.ENOPROTOOPT
    await stream.aclose()
    await server.aclose()
    await listener.aclose()


async def test_factory_gives_real_sockets_for_udp_and_unix() -> None:
    with utcp.installed() as factory:
        with trio.socket.socket() as tcp:
            assert isinstance(tcp, utcp.UtcpSocket)
        udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        assert not isinstance(udp, utcp.UtcpSocket)
        with udp, trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            await udp.bind(("127.0.0.1", 0))
            await other.sendto(b"datagram", udp.getsockname())
            assert (await udp.recvfrom(100))[0] == b"datagram"
        unix = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        assert not isinstance(unix, utcp.UtcpSocket)
        unix.close()
        previous = utcp.install(factory)
        assert previous is factory
    with trio.socket.socket() as kernel_tcp:
        assert not isinstance(kernel_tcp, utcp.UtcpSocket)
    utcp.uninstall()


async def test_two_writes_per_request_do_not_stall_on_nagle() -> None:
    # The new-user report: a request/response loop that writes each request and
    # each response in two send_all calls took 41.5 ms per request (Nagle holding the second
    # write until the delayed ACK of the first). utcp streams start with TCP_NODELAY, as
    # trio.SocketStream does on a kernel socket, so the loop runs at round-trip speed.
    requests = 50

    async def respond(stream: utcp.UtcpStream) -> None:
        async with stream:
            for _ in range(requests):
                got = b""
                while len(got) < 20:
                    got += await stream.receive_some()
                await stream.send_all(b"header..")
                await stream.send_all(b"body")

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(utcp.serve_tcp, respond, 0, host="127.0.0.1"))
        stream = await utcp.open_tcp_stream("127.0.0.1", listener.getsockname()[1])
        async with stream:
            start = trio.current_time()
            for _ in range(requests):
                await stream.send_all(b"request-head")
                await stream.send_all(b"-body...")
                got = b""
                while len(got) < 12:
                    got += await stream.receive_some()
            per_request = (trio.current_time() - start) / requests
        assert per_request < 0.015, f"{per_request * 1000:.1f} ms per request"
        nursery.cancel_scope.cancel()


async def socket_stream_pair(
    config: Config | None = None,
) -> tuple[trio.SocketStream, trio.SocketStream]:
    """trio.SocketStream on both ends of a UtcpSocket connection (trio's own classes)."""
    with utcp.installed(utcp.SocketFactory(config)):
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with listener:
            client = await trio.testing.open_stream_to_socket_listener(listener)
            server = await listener.accept()
    if config is CLOGGED:
        for stream in (client, server):
            sock = stream.socket
            assert isinstance(sock, utcp.UtcpSocket) and sock.stream is not None
            await fill_send_side(sock.stream)
    return client, server


async def test_trio_socket_stream_over_utcp_sockets_passes_trios_checker() -> None:
    # trio's own stream conformance checker, run on trio.SocketStream itself: the shim
    # gives it every socket behaviour it relies on (half-close, EOF, errors after close,
    # cancellation of blocked sends and receives, wait_send_all_might_not_block).
    with trio.fail_after(120):
        await trio.testing.check_half_closeable_stream(
            socket_stream_pair, partial(socket_stream_pair, CLOGGED)
        )


def test_mss_constant_matches_config() -> None:
    assert Config().local_mss(False) == MSS
