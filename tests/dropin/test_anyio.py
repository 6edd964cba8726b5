"""anyio on its trio backend over utcp: anyio's own ``connect_tcp`` under ``utcp.install()``,
and ``utcp.anyio``'s client and listener, plain and with anyio's TLS."""

from __future__ import annotations

import hashlib
import random
import socket
from functools import partial

import anyio
import anyio.abc
import pytest
import trio
from _dropin import Tls, assert_carried, assert_no_kernel_tcp
from anyio.streams.tls import TLSListener, TLSStream

import utcp
import utcp.anyio

PAYLOAD = random.Random(21).randbytes(400_000)


async def echo(stream: anyio.abc.ByteStream) -> None:
    async with stream:
        try:
            while True:
                await stream.send(await stream.receive())
        except anyio.EndOfStream:
            pass


async def round_trip(stream: anyio.abc.ByteStream) -> bytes:
    got = bytearray()
    async with anyio.create_task_group() as tg:
        tg.start_soon(stream.send, PAYLOAD)
        while len(got) < len(PAYLOAD):
            got += await stream.receive()
    return bytes(got)


async def test_anyio_connect_tcp_under_install_reaches_a_utcp_server() -> None:
    utcp.install()
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, echo_trio, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        stream = await anyio.connect_tcp("127.0.0.1", port)
        async with stream:
            assert await round_trip(stream) == PAYLOAD
            # anyio's raw_socket (and what it derives from it) is the UDP socket.
            raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            assert raw.type == socket.SOCK_DGRAM
            assert stream.extra(anyio.abc.SocketAttribute.local_port) == raw.getsockname()[1]
        assert_no_kernel_tcp(port)
        assert_carried(listener.socket.endpoint, len(PAYLOAD))
        nursery.cancel_scope.cancel()


async def echo_trio(stream: trio.abc.Stream) -> None:
    async with stream:
        while data := await stream.receive_some():
            await stream.send_all(data)


async def test_utcp_anyio_client_and_listener_keep_anyios_contract() -> None:
    multi = await utcp.anyio.create_tcp_listener(local_host="127.0.0.1")
    (listener,) = multi.listeners
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with multi, anyio.create_task_group() as tg:
        tg.start_soon(multi.serve, echo)
        stream = await utcp.anyio.connect_tcp("127.0.0.1", port)
        assert isinstance(stream, anyio.abc.SocketStream)
        assert stream.extra(anyio.abc.SocketAttribute.remote_address) == ("127.0.0.1", port)
        assert stream.extra(anyio.abc.SocketAttribute.remote_port) == port
        assert stream.extra(anyio.abc.SocketAttribute.family) == socket.AF_INET
        assert stream.extra(anyio.abc.SocketAttribute.raw_socket).type == socket.SOCK_DGRAM
        assert await round_trip(stream) == PAYLOAD
        await stream.send_eof()
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()
        await stream.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await stream.receive()
        assert_no_kernel_tcp(port)
        assert_carried(listener.utcp_listener.endpoint, len(PAYLOAD))
        tg.cancel_scope.cancel()


async def test_utcp_anyio_broken_by_a_reset_peer() -> None:
    multi = await utcp.anyio.create_tcp_listener(local_host="127.0.0.1")
    (listener,) = multi.listeners
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with multi:
        client = await utcp.anyio.connect_tcp("127.0.0.1", port, local_host="127.0.0.1")
        server = await listener.accept()
        await client.send(b"unread")
        with trio.fail_after(5):
            while not server.utcp_stream.conn.readable:
                await trio.sleep(0.01)
        await server.aclose()  # unread data: a RST (RFC 1122 4.2.2.13)
        with trio.fail_after(5), pytest.raises(anyio.BrokenResourceError):
            while True:
                await client.receive()
        await client.aclose()


async def test_utcp_anyio_with_anyio_tls(tls: Tls) -> None:
    multi = await utcp.anyio.create_tcp_listener(local_host="127.0.0.1")
    port = multi.listeners[0].extra(anyio.abc.SocketAttribute.local_port)
    secure = TLSListener(multi, tls.server_context(), standard_compatible=True)
    async with secure, anyio.create_task_group() as tg:
        tg.start_soon(secure.serve, echo)
        stream = await utcp.anyio.connect_tcp(
            "127.0.0.1", port, ssl_context=tls.client_context(), tls_hostname="127.0.0.1"
        )
        assert isinstance(stream, TLSStream)
        async with stream:
            got = await round_trip(stream)
        assert hashlib.sha256(got).digest() == hashlib.sha256(PAYLOAD).digest()
        assert_no_kernel_tcp(port)
        tg.cancel_scope.cancel()


def test_utcp_anyio_refuses_the_asyncio_backend_at_once() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match="trio backend"):
            await utcp.anyio.connect_tcp("127.0.0.1", 9)
        with pytest.raises(RuntimeError, match="trio backend"):
            await utcp.anyio.create_tcp_listener(local_host="127.0.0.1")

    anyio.run(main, backend="asyncio")
