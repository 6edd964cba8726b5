"""trio's own stream conformance checker, over real UDP and over the simulated network."""

from __future__ import annotations

from functools import partial

import trio
import trio.testing

from utcp._config import Config
from utcp.testing import CLOGGED, LinkConfig, TrioNetwork, sim_stream_pair, udp_stream_pair


async def test_half_closeable_stream_over_loopback_udp() -> None:
    await trio.testing.check_half_closeable_stream(
        udp_stream_pair,
        partial(udp_stream_pair, client_config=CLOGGED, server_config=CLOGGED),
    )


async def test_half_closeable_stream_over_ipv6_loopback() -> None:
    await trio.testing.check_half_closeable_stream(partial(udp_stream_pair, "::1"), None)


async def test_half_closeable_stream_over_simulated_network(autojump_clock: object) -> None:
    net = TrioNetwork(seed=1, link=LinkConfig(delay=0.01))
    cfg = Config()
    await trio.testing.check_half_closeable_stream(
        partial(sim_stream_pair, net, client_config=cfg, server_config=cfg),
        partial(sim_stream_pair, net, client_config=CLOGGED, server_config=CLOGGED),
    )
    net.close()


async def test_half_closeable_stream_over_lossy_simulated_network(autojump_clock: object) -> None:
    net = TrioNetwork(seed=2, link=LinkConfig(delay=0.02, loss=0.05, reorder=0.1))
    await trio.testing.check_half_closeable_stream(partial(sim_stream_pair, net), None)
    net.close()
