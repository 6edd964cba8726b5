"""TCP Fast Open through the trio layer (streams, the drop-in socket), on trio's MockClock
over the simulated network: a repeat request rides in the SYN."""

from __future__ import annotations

import socket as _stdsocket
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from utcp import Config, UtcpStream
from utcp._api import connect_on, listen_on
from utcp._fastopen import shared_cache
from utcp._socket import MSG_FASTOPEN
from utcp._stream import TCP_FASTOPEN, TCP_FASTOPEN_CONNECT
from utcp.testing import LinkConfig, TrioNetwork, sim_socket_factory
from utcp.testing._network import Address

ONE_WAY = 0.05
SERVER: Address = ("198.18.16.1", 443)
REQUEST = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\n\r\n"


@pytest.fixture(autouse=True)
def fresh_cookie_cache() -> Iterator[None]:
    shared_cache().clear()  # endpoints' hosts share the process-wide cookie cache
    yield
    shared_cache().clear()


async def read_all(stream: UtcpStream) -> bytes:
    got = b""
    while chunk := await stream.receive_some():
        got += chunk
    return got


async def answer_forever(
    net: TrioNetwork, config: Config, *, task_status: trio.TaskStatus[None]
) -> None:
    server_ep = net.endpoint(SERVER, config=config, auto_close=True)
    listener = await listen_on(server_ep)
    server_ep.release()
    task_status.started()
    async with trio.open_nursery() as nursery:
        while True:
            stream = await listener.accept()
            nursery.start_soon(answer, stream)


async def answer(stream: UtcpStream) -> None:
    request = await stream.receive_some()
    await stream.send_all(ANSWER + request)
    await stream.aclose()


async def request_once(net: TrioNetwork, n: int, config: Config) -> tuple[float, bytes, UtcpStream]:
    client_ep = net.endpoint(("198.19.16.1", 40000 + n), config=config, auto_close=True)
    # TrioNetwork stamps the first datagram after an idle spell with the simulation's last
    # instant rather than trio's clock; bring the simulation up to now first.
    net.sync()
    start = trio.current_time()
    try:
        stream = await connect_on(client_ep, SERVER)
    finally:
        client_ep.release()
    await stream.send_all(REQUEST)
    got = b""
    while len(got) < len(ANSWER + REQUEST):
        got += await stream.receive_some()
    elapsed = trio.current_time() - start
    # The FIN follows once the handshake is over: RFC 9293 3.10.4 queues a CLOSE in
    # SYN-RECEIVED until ESTABLISHED (Linux sends it at once).
    got += await read_all(stream)
    await stream.aclose()
    return elapsed, got, stream


@pytest.mark.parametrize("fastopen", [True, False])
async def test_repeat_request_rides_in_the_syn(
    autojump_clock: trio.testing.MockClock, fastopen: bool
) -> None:
    net = TrioNetwork(seed=3, link=LinkConfig(delay=ONE_WAY))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(answer_forever, net, Config(fastopen_queue=8 if fastopen else 0))
            client_config = Config(fastopen_connect=fastopen)
            times = []
            for n in (1, 2):
                elapsed, got, stream = await request_once(net, n, client_config)
                assert got == ANSWER + REQUEST
                times.append(elapsed)
                await trio.sleep(1.0)
            nursery.cancel_scope.cancel()
        stats = stream.statistics().fastopen
        # The answer reaches the client 2 RTT after connect (handshake, then request and
        # answer), 1 RTT with Fast Open's cookie (RFC 7413 3).
        assert times[0] == pytest.approx(4 * ONE_WAY)
        if fastopen:
            assert times[1] == pytest.approx(2 * ONE_WAY)
            assert stats["syn_data_sent"] == stats["syn_data_acked"] == 1
        else:
            assert times[1] == pytest.approx(times[0])
            assert stats["syn_data_sent"] == 0
    finally:
        net.close()


async def test_stream_options_read_back_and_refuse_late_changes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = TrioNetwork(seed=4, link=LinkConfig(delay=ONE_WAY))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(answer_forever, net, Config(fastopen_queue=8))
            client_ep = net.endpoint(("198.19.16.9", 40000), config=Config(fastopen_connect=True))
            stream = await connect_on(client_ep, SERVER)
            client_ep.release()
            assert stream.getsockopt(_stdsocket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT) == 1
            with pytest.raises(OSError):
                stream.setsockopt(_stdsocket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 0)
            await stream.aclose()
            nursery.cancel_scope.cancel()
    finally:
        net.close()


async def test_dropin_socket_options_and_msg_fastopen(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Linux's API: TCP_FASTOPEN on the listener (the queue length), TCP_FASTOPEN_CONNECT
    # before connect(), or sendto(data, MSG_FASTOPEN, address) on a fresh socket.
    net = TrioNetwork(seed=5, link=LinkConfig(delay=ONE_WAY))
    tcp = _stdsocket.IPPROTO_TCP
    try:
        server_factory = sim_socket_factory(net, "198.18.17.1")
        client_factory = sim_socket_factory(net, "198.19.17.1")
        listener = server_factory.socket()
        await listener.bind(("198.18.17.1", 443))
        listener.listen()
        assert listener.getsockopt(tcp, TCP_FASTOPEN) == 0  # off by default
        listener.setsockopt(tcp, TCP_FASTOPEN, 5)
        assert listener.getsockopt(tcp, TCP_FASTOPEN) == 5

        async def serve_two() -> None:
            for _ in range(2):
                sock, _ = await listener.accept()
                request = await sock.recv(1000)
                await sock.send(ANSWER + request)
                sock.close()

        times = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_two)
            first = client_factory.socket()
            assert first.getsockopt(tcp, TCP_FASTOPEN_CONNECT) == 0
            first.setsockopt(tcp, TCP_FASTOPEN_CONNECT, 1)
            net.sync()
            start = trio.current_time()
            await first.connect(("198.18.17.1", 443))
            await first.send(REQUEST)
            assert await first.recv(1000) == ANSWER + REQUEST
            times.append(trio.current_time() - start)
            first.close()
            await trio.sleep(1.0)
            second = client_factory.socket()
            net.sync()
            start = trio.current_time()
            assert await second.sendto(REQUEST, MSG_FASTOPEN, ("198.18.17.1", 443)) == len(REQUEST)
            assert await second.recv(1000) == ANSWER + REQUEST
            times.append(trio.current_time() - start)
            assert second.statistics().fastopen["syn_data_acked"] == 1
            second.close()
        assert times == [pytest.approx(4 * ONE_WAY), pytest.approx(2 * ONE_WAY)]
        with pytest.raises(OSError):
            await client_factory.socket().sendto(b"x", ("198.18.17.1", 443))
        listener.close()
    finally:
        net.close()
