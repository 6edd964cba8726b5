"""Bulk flows sharing a simulated bottleneck: the bench for loss recovery and congestion
control (who gets what share, how fast a loss is repaired, what a path of a given loss and
RTT yields).

``run_flows`` opens one connection per ``Flow`` from a client host to a server host across
one ``SimNetwork`` path, keeps each sender's buffer full from its start time to its stop
time, reads everything at the receiver, and samples the bytes each flow delivered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .._config import Config
from .._connection import Connection
from ._network import LinkConfig, SimNetwork
from ._pair import SERVER_ADDR, HostPair

_CHUNK = b"\0" * (256 * 1024)


@dataclass
class Flow:
    """One bulk sender: from ``start`` until ``stop`` (or until ``size`` bytes are sent)."""

    config: Config = field(default_factory=Config)
    start: float = 0.0
    stop: float | None = None
    size: int | None = None
    # filled in by run_flows
    client: Connection | None = None
    server: Connection | None = None
    sent: int = 0
    received: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)
    done_time: float | None = None

    def received_between(self, t0: float, t1: float) -> int:
        """Bytes delivered to the receiving application within [t0, t1] (sampled)."""
        return _at(self.samples, t1) - _at(self.samples, t0)


def _at(samples: list[tuple[float, int]], t: float) -> int:
    value = 0
    for when, got in samples:
        if when > t:
            break
        value = got
    return value


@dataclass
class FlowRun:
    flows: list[Flow]
    net: SimNetwork
    duration: float


def bottleneck(rtt: float, rate: float, *, queue_bdp: float = 1.0, **extra: object) -> LinkConfig:
    """The forward link of a path: one-way delay rtt/2, ``rate`` bits/s, a drop-tail queue of
    ``queue_bdp`` bandwidth-delay products."""
    queue = max(int(rate / 8 * rtt * queue_bdp), 3000)
    return LinkConfig(delay=rtt / 2, rate=rate, queue_bytes=queue, **extra)  # type: ignore[arg-type]


def run_flows(
    flows: list[Flow],
    *,
    seed: int,
    link: LinkConfig,
    reverse_link: LinkConfig | None = None,
    duration: float,
    sample_interval: float = 0.1,
    filters: list[Callable[[float, tuple[str, int], tuple[str, int], bytes], bool]] | None = None,
) -> FlowRun:
    """Run ``flows`` for ``duration`` virtual seconds (or until every sized flow finished)."""
    # HostPair: the two hosts, the seeded network between them, the listener, the clock.
    pair = HostPair(seed=seed, link=link, reverse_link=reverse_link or LinkConfig(delay=link.delay))
    net, client, server = pair.net, pair.client, pair.server
    for fn in filters or ():
        net.add_filter(fn)
    start = net.now
    end = start + duration
    next_sample = start
    pending = sorted(range(len(flows)), key=lambda i: flows[i].start)
    by_port: dict[int, Flow] = {}

    def step() -> bool:
        nonlocal next_sample
        now = net.now
        while pending and flows[pending[0]].start + start <= now:
            flow = flows[pending.pop(0)]
            flow.client = client.connect(SERVER_ADDR, now, config=flow.config)
            by_port[flow.client.local_port] = flow
        while (conn := server.accept(SERVER_ADDR[1])) is not None:
            by_port[conn.remote_port].server = conn
        for flow in flows:
            _pump(flow, now, start)
        if now >= next_sample:
            for flow in flows:
                flow.samples.append((now - start, flow.received))
            next_sample += sample_interval
        pair.wake_at(next_sample)
        if pending:
            pair.wake_at(flows[pending[0]].start + start)
        sized = [f for f in flows if f.size is not None]
        if sized and len(sized) == len(flows) and all(f.done_time is not None for f in sized):
            return True
        return now >= end

    net.run(step, timeout=duration + 1.0, max_steps=50_000_000)
    return FlowRun(flows, net, net.now - start)


def _pump(flow: Flow, now: float, start: float) -> None:
    conn = flow.client
    if conn is None:
        return
    stop = flow.stop is not None and now - start >= flow.stop
    limit = flow.size if flow.size is not None else 1 << 62
    while not stop and flow.sent < limit and conn.send_space and not conn.closed:
        n = min(len(_CHUNK), limit - flow.sent)
        flow.sent += conn.send(memoryview(_CHUNK)[:n])
    peer = flow.server
    if peer is not None:
        while peer.readable:
            flow.received += len(peer.receive(1 << 20))
        if flow.size is not None and flow.received >= flow.size and flow.done_time is None:
            flow.done_time = now - start
