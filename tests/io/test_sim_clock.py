"""The trio layer on trio's MockClock over the simulated network: protocol timers that last
minutes or hours in protocol time run in milliseconds, deterministically."""

from __future__ import annotations

import hashlib
import random

import pytest
import trio
import trio.testing

from utcp import Config, State, UtcpStream
from utcp.testing import LinkConfig, TrioNetwork, sim_stream_pair
from utcp.testing._network import Address

DELAY = 0.025  # one way, so RTT = 50 ms


async def closed_pair(net: TrioNetwork, config: Config) -> tuple[UtcpStream, UtcpStream]:
    """A connected pair that has exchanged some data and closed; the client closed first."""
    client, server = await sim_stream_pair(net, client_config=config, server_config=config)
    data = random.Random(5).randbytes(100_000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, data)
        got = b""
        while len(got) < len(data):
            got += await server.receive_some()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    await client.send_eof()
    assert await server.receive_some() == b""
    await server.aclose()
    assert await client.receive_some() == b""
    await client.aclose()
    return client, server


async def test_time_wait_lasts_two_msl(autojump_clock: trio.testing.MockClock) -> None:
    net = TrioNetwork(seed=11, link=LinkConfig(delay=DELAY))
    try:
        client, server = await closed_pair(net, Config())  # MSL 30 s: TIME-WAIT 60 s
        await trio.sleep(2 * DELAY)  # the last ACK reaches the server
        entered = trio.current_time()
        assert client.conn.state is State.TIME_WAIT
        assert server.conn.state is State.CLOSED
        await trio.sleep(59.0)
        assert client.conn.state is State.TIME_WAIT
        assert not client.endpoint.closed  # TIME-WAIT keeps its endpoint answering
        await trio.sleep(2.0)
        assert client.conn.state is State.CLOSED
        assert trio.current_time() - entered == pytest.approx(61.0)
        await trio.sleep(0.01)
        assert client.endpoint.closed  # nothing uses it any more: it wound itself down
    finally:
        net.close()


async def test_time_wait_reacks_a_retransmitted_fin(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The server's FIN is delivered but the client's last ACK is lost: the server retransmits
    # its FIN, the client in TIME-WAIT acknowledges it again and the server closes.
    net = TrioNetwork(seed=12, link=LinkConfig(delay=DELAY))
    try:
        client, server = await sim_stream_pair(net)
        await client.send_eof()
        assert await server.receive_some() == b""
        server_addr: Address = server.endpoint.local_address
        dropped: list[float] = []

        def drop_first_ack_after_fin(now: float, src: Address, dst: Address, data: bytes) -> bool:
            if dst == server_addr and client.conn.state is State.TIME_WAIT and not dropped:
                dropped.append(now)
                return True
            return False

        net.net.add_filter(drop_first_ack_after_fin)
        await server.aclose()
        with trio.fail_after(10):
            while server.conn.state is not State.CLOSED:
                await trio.sleep(0.01)
        assert dropped
        assert server.conn.error is None  # closed by the re-ACK, not a timeout
        assert server.conn.stats.retransmits >= 1
        assert client.conn.state is State.TIME_WAIT
        await client.aclose()
    finally:
        net.close()


async def test_keepalive_detects_a_dead_peer_after_two_hours(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = TrioNetwork(seed=13, link=LinkConfig(delay=DELAY))
    try:
        # Kernel TCP's keep-alive times: 2 h idle, 75 s interval, 9 probes.
        config = Config(
            keepalive=True, keepalive_idle=7200.0, keepalive_interval=75.0, keepalive_count=9
        )
        client, server = await sim_stream_pair(net, client_config=config)
        start = trio.current_time()
        server_addr: Address = server.endpoint.local_address
        net.net.add_filter(lambda now, src, dst, data: server_addr in (src, dst))
        with pytest.raises(trio.BrokenResourceError) as info:
            await client.receive_some(1)
        assert isinstance(info.value.__cause__, TimeoutError)
        elapsed = trio.current_time() - start
        # RFC 1122 4.2.3.6: first probe after the idle time, then keepalive_count probes
        # keepalive_interval apart; the connection fails one interval after the last.
        assert elapsed == pytest.approx(7200 + 9 * 75, abs=0.5)
        assert client.conn.stats.keepalive_probes == 9
        await client.aclose()
        await server.aclose()
    finally:
        net.close()


async def test_keepalive_keeps_a_live_idle_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = TrioNetwork(seed=14, link=LinkConfig(delay=DELAY))
    try:
        config = Config(
            keepalive=True, keepalive_idle=7200.0, keepalive_interval=75.0, keepalive_count=9
        )
        client, server = await sim_stream_pair(net, client_config=config)
        with trio.move_on_after(5 * 3600):
            await client.receive_some(1)  # nothing arrives for five hours...
        assert client.conn.state is State.ESTABLISHED  # ...but the peer answers every probe
        assert client.conn.stats.keepalive_probes == 2  # one per two idle hours
        await client.send_all(b"still here")
        assert await server.receive_some() == b"still here"
        await client.aclose()
        await server.aclose()
    finally:
        net.close()


async def test_user_timeout_fails_a_connection_to_a_vanished_peer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = TrioNetwork(seed=15, link=LinkConfig(delay=DELAY))
    try:
        client, server = await sim_stream_pair(net, client_config=Config(user_timeout=20.0))
        server_addr: Address = server.endpoint.local_address
        net.net.add_filter(lambda now, src, dst, data: server_addr in (src, dst))
        start = trio.current_time()
        await client.send_all(b"into the void")
        with pytest.raises(trio.BrokenResourceError) as info:
            await client.receive_some(1)
        assert isinstance(info.value.__cause__, TimeoutError)
        assert trio.current_time() - start == pytest.approx(20.0, abs=0.01)
        await client.aclose()
        await server.aclose()
    finally:
        net.close()
