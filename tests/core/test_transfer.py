"""Two cores over the seeded simulated network: bulk transfers both ways must arrive intact.

Each scenario runs a 1 MB transfer in each direction for 50 seeds, plus one 20 MB transfer;
``tox -e nightly`` (marker ``slow``) widens the sweep. A failing seed is in the test id, so
``pytest -k 'loss5 and 17'`` replays it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from utcp._config import Config
from utcp._state import State
from utcp.testing import HostPair, LinkConfig, TransferResult, random_payload

MB = 1_000_000
SEEDS = range(50)
NIGHTLY_SEEDS = range(50, 500)


@dataclass(frozen=True)
class Scenario:
    link: LinkConfig
    config: Config = field(default_factory=Config)
    slow_reader: str | None = None
    wrap_isn: bool = False


SCENARIOS = {
    "loss5": Scenario(LinkConfig(delay=0.02, loss=0.05)),
    "reorder": Scenario(
        LinkConfig(delay=0.02, jitter=0.002, loss=0.02, reorder=0.25, duplicate=0.01)
    ),
    "corrupt": Scenario(LinkConfig(delay=0.02, corrupt=0.01)),
    "zerowindow": Scenario(
        LinkConfig(delay=0.02, loss=0.01), Config(receive_buffer_size=32768), slow_reader="server"
    ),
    "wrap": Scenario(LinkConfig(delay=0.02, loss=0.02, reorder=0.05), wrap_isn=True),
}


def run(name: str, seed: int, size: int) -> TransferResult:
    sc = SCENARIOS[name]
    pair = HostPair(
        seed=seed,
        link=sc.link,
        config=sc.config,
        client_iss=(2**32 - 1 - seed % 50) if sc.wrap_isn else None,
        server_iss=(2**32 - 700 - seed % 50) if sc.wrap_isn else None,
    )
    client_data = random_payload(seed, size)
    server_data = random_payload(seed + 10_000, size)
    result = pair.transfer(
        client_data,
        server_data,
        slow_reader=sc.slow_reader,
        # Reads smaller than an MSS: receiver SWS avoidance (RFC 9293 3.8.6.2.2) must then
        # let the window close to zero before it reopens by a full segment or more.
        read_size=1024,
        read_interval=0.05,
    )
    check(name, seed, result, sc)
    # The 4-way close completes: both ends reach CLOSED (through TIME-WAIT) without error.
    pair.run_until_closed((result.client.conn, result.server.conn))
    for side in (result.client, result.server):
        assert side.conn.error is None, f"scenario {name} seed {seed}: {side.conn.error}"
    return result


def check(name: str, seed: int, result: TransferResult, sc: Scenario) -> None:
    c, s = result.client, result.server
    where = f"scenario {name} seed {seed}"
    assert len(s.received) == len(c.to_send), where
    assert len(c.received) == len(s.to_send), where
    assert c.digest_sent() == s.digest_received(), where
    assert s.digest_sent() == c.digest_received(), where
    for side in (c, s):
        assert side.conn.error is None, where
        assert side.conn.state is not State.ESTABLISHED, where
    if sc.slow_reader == "server":
        assert s.conn.stats.zero_windows_advertised > 0, where
    if sc.wrap_isn:
        # Both sequence spaces really crossed 2**32.
        assert c.conn.iss > 2**32 - 100 and c.conn.snd_una < 2**31
        assert s.conn.iss > 2**32 - 1000 and s.conn.snd_una < 2**31


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_one_megabyte_each_way(name: str, seed: int) -> None:
    run(name, seed, MB)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_twenty_megabytes_each_way(name: str) -> None:
    run(name, 1234, 20 * MB if name != "zerowindow" else 2 * MB)


@pytest.mark.slow
@pytest.mark.parametrize("seed", NIGHTLY_SEEDS)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_nightly_sweep(name: str, seed: int) -> None:
    run(name, seed, MB)


def test_corruption_is_detected_and_dropped() -> None:
    """Corrupted datagrams are counted as checksum drops by the hosts, never delivered."""
    pair = HostPair(seed=3, link=LinkConfig(delay=0.01, corrupt=0.05))
    result = pair.transfer(random_payload(1, 300_000), random_payload(2, 300_000))
    assert result.intact
    drops = pair.client.stats.checksum_drops + pair.server.stats.checksum_drops
    assert drops > 0


def test_transfer_is_deterministic_per_seed() -> None:
    def fingerprint(seed: int) -> tuple[float, int, int]:
        r = run("reorder", seed, 200_000)
        return r.elapsed, r.client.conn.stats.retransmits, r.server.conn.stats.segments_sent

    assert fingerprint(5) == fingerprint(5)
    assert fingerprint(5) != fingerprint(6)
