"""Third-party stacks, unmodified, over utcp: an httpx client against an h11 server served by
``trio.serve_tcp`` (over loopback UDP, and over the simulated network with 2% loss), and
trio-websocket's own server and client."""

from __future__ import annotations

import hashlib
import random
from functools import partial

import h11
import httpx
import trio
import trio.testing
from _dropin import assert_carried, assert_no_kernel_tcp
from trio_websocket import ConnectionClosed, WebSocketRequest, open_websocket_url, serve_websocket

import utcp
from utcp.testing import LinkConfig, TrioNetwork, sim_socket_factory

BLOB = random.Random(34).randbytes(5_000_000)
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()


class H11Server:
    """A minimal HTTP/1.1 server on h11, served with trio.serve_tcp: ``GET /blob`` answers
    BLOB, ``POST /sha256`` answers the sha256 of the request body, anything else "hello"."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0

    async def handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                request = await self._next(conn, stream)
                if not isinstance(request, h11.Request):
                    return  # the client closed the connection
                body = hashlib.sha256()
                while isinstance(event := await self._next(conn, stream), h11.Data):
                    body.update(event.data)
                self.requests += 1
                if request.target == b"/blob":
                    payload = BLOB
                elif request.target == b"/sha256":
                    payload = body.hexdigest().encode()
                else:
                    payload = b"hello"
                headers = [("content-length", str(len(payload))), ("content-type", "text/plain")]
                await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
                await stream.send_all(conn.send(h11.Data(data=payload)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()

    @staticmethod
    async def _next(conn: h11.Connection, stream: trio.abc.Stream) -> object:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await stream.receive_some())


async def http_exchange(base_url: str) -> None:
    """Several requests on one kept-alive connection, 5 MB each way, sha256 checked."""
    async with httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=60) as client:
        for _ in range(3):
            response = await client.get("/")
            assert response.status_code == 200 and response.text == "hello"
        response = await client.post("/sha256", content=BLOB)
        assert response.text == BLOB_SHA
        response = await client.get("/blob")
        assert hashlib.sha256(response.content).hexdigest() == BLOB_SHA
        assert response.http_version == "HTTP/1.1"


async def test_httpx_against_an_h11_server_on_trio_serve_tcp() -> None:
    utcp.install()
    server = H11Server()
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(
            partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1")
        )
        port = listener.socket.getsockname()[1]
        await http_exchange(f"http://127.0.0.1:{port}")
        assert server.requests == 5
        assert server.connections == 1  # every request on one kept-alive connection
        assert_no_kernel_tcp(port)
        assert_carried(listener.socket.endpoint, received=len(BLOB), sent=len(BLOB))
        nursery.cancel_scope.cancel()


async def test_httpx_exchange_over_a_simulated_path_with_two_percent_loss(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The same code, its sockets bound on the simulated network (RTT 40 ms, 2% loss each way
    # on a virtual clock): utcp recovers every loss under HTTP that never knew.
    net = TrioNetwork(seed=7, link=LinkConfig(delay=0.02, loss=0.02))
    try:
        utcp.install(sim_socket_factory(net, "198.18.0.2"))
        server = H11Server()
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(
                partial(trio.serve_tcp, server.handle, 80, host="198.18.0.1")
            )
            await http_exchange("http://198.18.0.1:80")
            assert server.requests == 5 and server.connections == 1
            # The simulated links did drop datagrams, both ways.
            assert net.net.link_stats("198.18.0.2", "198.18.0.1").lost > 0
            assert net.net.link_stats("198.18.0.1", "198.18.0.2").lost > 0
            endpoint = listener.socket.endpoint
            assert_carried(endpoint, received=len(BLOB), sent=len(BLOB))
            nursery.cancel_scope.cancel()
    finally:
        net.close()


async def test_trio_websocket_server_and_client_exchange_messages() -> None:
    factory = utcp.SocketFactory()
    utcp.install(factory)
    received: list[str | bytes] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                message = await ws.get_message()
                received.append(message)
                await ws.send_message(f"echo:{message!r}" if isinstance(message, str) else message)
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve_websocket, handler, "127.0.0.1", 0, ssl_context=None)
        )
        port = server.port
        async with open_websocket_url(f"ws://127.0.0.1:{port}/chat") as ws:
            await ws.send_message("hello")
            assert await ws.get_message() == "echo:'hello'"
            blob = random.Random(3).randbytes(200_000)
            await ws.send_message(blob)
            assert await ws.get_message() == blob
            for i in range(20):
                await ws.send_message(f"m{i}")
                assert await ws.get_message() == f"echo:'m{i}'"
        assert received[:2] == ["hello", blob] and len(received) == 22
        assert_no_kernel_tcp(port)
        # Both ends' utcp connections carried the messages.
        carried = [st.bytes_received for _, st in factory.connection_statistics()]
        assert len(carried) == 2 and min(carried) >= len(blob)
        nursery.cancel_scope.cancel()
