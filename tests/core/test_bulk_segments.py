"""The sender's per-segment work was made cheaper (issue 11) without changing what goes on
the wire: seeded transfers over the simulated network, over clean, lossy, reordering and
rate-limited links, with SACK, pacing, Nagle, small and large segments and a reader that
lets its window close, put exactly the datagrams on the wire, at exactly the virtual
times, that the tree before that work put there (SHA-256 of the whole trace, recorded on
0a3d69f), and deliver the bytes intact.

A deliberate change of behaviour on the wire changes these digests: check that the new
trace is the intended one, then record the new digests (``print(trace_digest(...))``).
"""

from __future__ import annotations

import hashlib

import pytest

from utcp import Config
from utcp.testing import HostPair, LinkConfig, random_payload

LINKS = {
    "clean": LinkConfig(delay=0.01),
    "lossy": LinkConfig(delay=0.02, loss=0.03),
    "reordering": LinkConfig(delay=0.01, jitter=0.002, reorder=0.05, duplicate=0.01),
    "bottleneck": LinkConfig(delay=0.02, rate=4e6, queue_bytes=60_000),
    "jumbo-lossy": LinkConfig(delay=0.005, loss=0.03, mtu=65535),
}

CONFIGS = {
    "default": Config(),
    "no-sack": Config(sack=False),
    "no-pacing": Config(pacing=False),
    "nodelay": Config(nodelay=True),
    "mss-16000": Config(mss=16000, send_buffer_size=1 << 19),
    "newreno": Config(congestion_control="newreno", timestamps=False),
}


def trace_digest(link: str, config: str, *, seed: int = 3, slow_reader: str | None = None) -> str:
    pair = HostPair(seed=seed, link=LINKS[link], config=CONFIGS[config], trace=True)
    up = random_payload(seed, 1_000_000)
    down = random_payload(seed + 1, 30_000)
    result = pair.transfer(up, down, slow_reader=slow_reader, read_size=16_384, chunk=50_000)
    assert result.intact
    digest = hashlib.sha256()
    for r in pair.net.trace_records:
        if r.fate == "sent":
            digest.update(repr((round(r.time, 9), r.src, r.dst, len(r.data))).encode())
            digest.update(r.data)
    return digest.hexdigest()[:16]


GOLDEN = {
    ("clean", "default"): "3de503077dab6045",
    ("lossy", "default"): "d34d8c1d2e84962e",
    ("reordering", "default"): "59ee402c184889c0",
    ("bottleneck", "default"): "928694fccfea97e7",
    ("lossy", "no-sack"): "bd172fd4f59f585c",
    ("bottleneck", "no-pacing"): "5229cef532c60687",
    ("clean", "nodelay"): "3869f201a9493580",
    ("jumbo-lossy", "mss-16000"): "477000030d0a566f",
    ("reordering", "newreno"): "baf6ddfd07a38c0a",
}


@pytest.mark.parametrize(("link", "config"), sorted(GOLDEN))
def test_the_same_datagrams_at_the_same_times_as_before(link: str, config: str) -> None:
    assert trace_digest(link, config) == GOLDEN[link, config]


def test_a_window_that_closes_and_reopens_gives_the_same_datagrams_as_before() -> None:
    assert trace_digest("clean", "default", slow_reader="server") == "e029049f1db221d4"
