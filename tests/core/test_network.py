"""Tests for the simulated datagram network (utcp.testing.SimNetwork), with toy nodes."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import pytest

from utcp.testing import (
    Address,
    GilbertElliott,
    LinkConfig,
    SimNetwork,
    SimulationTimeout,
    TraceRecord,
)

A: Address = ("198.18.0.1", 1000)
B: Address = ("198.18.0.2", 2000)
A6: Address = ("fd00::1", 1000)
B6: Address = ("fd00::2", 2000)


def numbered(i: int, size: int = 8) -> bytes:
    return i.to_bytes(4, "big").ljust(size, b"\x00")


def number(data: bytes) -> int:
    return int.from_bytes(data[:4], "big")


class Toy:
    """Sends whatever is put in `outbox` on the next poll; records what it receives."""

    def __init__(self) -> None:
        self.outbox: list[tuple[bytes, Address]] = []
        self.received: list[tuple[float, bytes, Address]] = []
        self.batches: list[tuple[float, int]] = []

    def send(self, dst: Address, count: int, size: int = 8, first: int = 0) -> None:
        self.outbox.extend((numbered(i, size), dst) for i in range(first, first + count))

    def receive_datagrams(self, batch: Sequence[tuple[bytes, Address]], now: float) -> None:
        self.batches.append((now, len(batch)))
        self.received.extend((now, data, src) for data, src in batch)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self.outbox = self.outbox, []
        return out

    def next_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        raise AssertionError("no timer armed")

    def numbers(self) -> list[int]:
        return [number(data) for _, data, _ in self.received]


class Echo(Toy):
    """Sends every datagram back to its source."""

    def receive_datagrams(self, batch: Sequence[tuple[bytes, Address]], now: float) -> None:
        super().receive_datagrams(batch, now)
        self.outbox.extend(batch)


class Ticker(Toy):
    """A periodic timer with deadlines start + k * period, k = 1..count (forever if None)."""

    def __init__(self, period: float, count: int | None = None, start: float = 0.0) -> None:
        super().__init__()
        self.period = period
        self.count = count
        self.start = start
        self.k = 1
        self.fired: list[tuple[float, float]] = []  # (deadline, now)

    def next_timer(self) -> float | None:
        if self.count is not None and self.k > self.count:
            return None
        return self.start + self.k * self.period

    def handle_timer(self, now: float) -> None:
        deadline = self.next_timer()
        assert deadline is not None
        assert now >= deadline, f"timer handled early: now={now} deadline={deadline}"
        self.fired.append((deadline, now))
        self.k += 1


def pair(
    link: LinkConfig | None = None, *, seed: int = 1, trace: bool = False
) -> tuple[SimNetwork, Toy, Toy]:
    net = SimNetwork(seed=seed, trace=trace)
    if link is not None:
        net.set_link(A[0], B[0], link)
    a, b = Toy(), Toy()
    net.attach(A, a)
    net.attach(B, b)
    return net, a, b


# -- delay and bottleneck -----------------------------------------------------------------------


def test_delay_gives_exact_delivery_time_in_one_batch() -> None:
    net, a, b = pair(LinkConfig(delay=0.05))
    a.send(B, 3)
    assert net.run(timeout=1.0) == 0.05
    assert b.received == [(0.05, numbered(i), A) for i in range(3)]
    assert b.batches == [(0.05, 3)]
    stats = net.link_stats(A[0], B[0])
    assert (stats.sent, stats.delivered, stats.bytes_delivered) == (3, 3, 24)


def test_round_trip_uses_each_direction_delay() -> None:
    net = SimNetwork(seed=1)
    net.set_link(A[0], B[0], LinkConfig(delay=0.01))
    net.set_link(B[0], A[0], LinkConfig(delay=0.02))
    a, b = Toy(), Echo()
    net.attach(A, a)
    net.attach(B, b)
    a.send(B, 1)
    net.run(timeout=1.0)
    assert b.received == [(0.01, numbered(0), A)]
    [(when, data, src)] = a.received
    assert when == pytest.approx(0.03, abs=1e-12)
    assert (data, src) == (numbered(0), B)


def test_bottleneck_serialisation_spaces_arrivals() -> None:
    net, a, b = pair(LinkConfig(delay=0.01, rate=8e6))
    a.send(B, 5, size=1000)
    net.run(timeout=1.0)
    spacing = 1028 * 8 / 8e6
    assert [t for t, _, _ in b.received] == pytest.approx(
        [0.01 + (i + 1) * spacing for i in range(5)], abs=1e-12
    )
    assert b.numbers() == list(range(5))


def test_bottleneck_counts_ipv6_headers() -> None:
    net = SimNetwork(seed=1, default_link=LinkConfig(rate=1e6))
    a, b = Toy(), Toy()
    net.attach(A6, a)
    net.attach(B6, b)
    a.send(B6, 1, size=952)
    net.run(timeout=1.0)
    assert b.received[0][0] == pytest.approx((952 + 48) * 8 / 1e6, abs=1e-12)


def test_mtu_drops_ipv4_and_ipv6() -> None:
    net = SimNetwork(seed=1)
    a, b, a6, b6 = Toy(), Toy(), Toy(), Toy()
    for address, node in ((A, a), (B, b), (A6, a6), (B6, b6)):
        net.attach(address, node)
    a.outbox += [(b"x" * 1472, B), (b"y" * 1473, B)]
    a6.outbox += [(b"x" * 1452, B6), (b"y" * 1453, B6)]
    net.run(timeout=1.0)
    assert [len(d) for _, d, _ in b.received] == [1472]
    assert [len(d) for _, d, _ in b6.received] == [1452]
    assert net.link_stats(A[0], B[0]).mtu_drops == 1
    assert net.link_stats(A6[0], B6[0]).mtu_drops == 1


def test_queue_drops_when_bottleneck_queue_is_full() -> None:
    net, a, b = pair(LinkConfig(rate=8e6, queue_bytes=5 * 1028), trace=True)
    a.send(B, 10, size=1000)
    net.run_for(0.0025)  # two of the five queued datagrams have left the queue
    stats = net.link_stats(A[0], B[0])
    assert (stats.sent, stats.queue_drops) == (10, 5)
    assert [r.fate for r in net.trace_records].count("queue_drop") == 5
    a.send(B, 3, size=1000, first=100)  # room for two more
    net.run(timeout=1.0)
    assert stats.queue_drops == 6
    assert b.numbers() == [0, 1, 2, 3, 4, 100, 101]


# -- random impairments --------------------------------------------------------------------------


def test_independent_loss_rate_within_statistical_bounds() -> None:
    n, p = 20_000, 0.1
    net, a, b = pair(LinkConfig(loss=p), seed=7)
    a.send(B, n)
    net.run(timeout=1.0)
    stats = net.link_stats(A[0], B[0])
    assert stats.sent == n
    assert stats.delivered + stats.lost == n
    assert len(b.received) == stats.delivered
    assert abs(stats.lost - n * p) < 4 * math.sqrt(n * p * (1 - p))


def test_gilbert_elliott_losses_come_in_bursts() -> None:
    n = 20_000
    ge = GilbertElliott(p_good_to_bad=0.02, p_bad_to_good=0.25)
    net, a, b = pair(LinkConfig(burst_loss=ge), seed=3)
    a.send(B, n)
    net.run(timeout=1.0)
    got = set(b.numbers())
    bursts: list[int] = []
    run = 0
    for i in range(n):
        if i in got:
            if run:
                bursts.append(run)
            run = 0
        else:
            run += 1
    if run:
        bursts.append(run)
    assert sum(bursts) == net.link_stats(A[0], B[0]).lost
    assert len(bursts) > 200
    assert sum(bursts) / len(bursts) == pytest.approx(1 / ge.p_bad_to_good, rel=0.15)
    stationary_loss = ge.p_good_to_bad / (ge.p_good_to_bad + ge.p_bad_to_good)
    assert sum(bursts) / n == pytest.approx(stationary_loss, rel=0.2)


def test_duplication_delivers_extra_copies() -> None:
    n, p = 5000, 0.2
    net, a, b = pair(LinkConfig(duplicate=p, jitter=0.001), seed=11)
    a.send(B, n)
    net.run(timeout=1.0)
    stats = net.link_stats(A[0], B[0])
    assert abs(stats.duplicated - n * p) < 4 * math.sqrt(n * p * (1 - p))
    assert stats.delivered == n + stats.duplicated
    copies = Counter(b.numbers())
    assert set(copies) == set(range(n))
    assert sum(1 for c in copies.values() if c == 2) == stats.duplicated
    assert max(copies.values()) == 2


@pytest.mark.parametrize("model", ["burst", "scatter"])
def test_corruption_damages_a_copy(model: str) -> None:
    n, p = 5000, 0.1
    net, a, b = pair(LinkConfig(corrupt=p, corrupt_model=model), seed=5)
    a.send(B, n, size=32)
    sent = list(a.outbox)
    net.run(timeout=1.0)
    assert a.outbox == [] and [d for d, _ in sent] == [numbered(i, 32) for i in range(n)]
    distances: Counter[int] = Counter()
    for (data, _), (_, got, _) in zip(sent, b.received, strict=True):
        diff = int.from_bytes(data, "big") ^ int.from_bytes(got, "big")
        distances[bin(diff).count("1")] += 1
        if model == "burst" and diff:
            # One run of adjacent bits: diff >> lowest set bit is 2**k - 1.
            run = diff >> ((diff & -diff).bit_length() - 1)
            assert run & (run + 1) == 0
    corrupted = n - distances[0]
    assert corrupted == net.link_stats(A[0], B[0]).corrupted
    assert abs(corrupted - n * p) < 4 * math.sqrt(n * p * (1 - p))
    if model == "scatter":
        assert set(distances) == {0, 1, 2, 3}
    else:
        assert set(distances) == set(range(16))


def test_jitter_alone_keeps_fifo_order() -> None:
    # The bottleneck spreads departures 0.128 ms apart, far less than the jitter.
    net, a, b = pair(LinkConfig(delay=0.01, jitter=0.02, rate=8e6), seed=2)
    a.send(B, 2000, size=100)
    net.run(timeout=1.0)
    times = [t for t, _, _ in b.received]
    assert b.numbers() == list(range(2000))
    assert times == sorted(times)
    assert len(set(times)) > 100  # jitter did spread the arrivals
    assert net.link_stats(A[0], B[0]).reordered == 0


def test_reorder_lets_later_datagrams_overtake() -> None:
    net, a, b = pair(LinkConfig(delay=0.01, jitter=0.02, rate=8e6, reorder=0.1), seed=2)
    a.send(B, 2000, size=100)
    net.run(timeout=1.0)
    got = b.numbers()
    assert sorted(got) == list(range(2000))
    assert got != sorted(got)
    stats = net.link_stats(A[0], B[0])
    assert 100 < stats.reordered < 300


# -- determinism ---------------------------------------------------------------------------------


def lossy_trace(seed: int) -> list[TraceRecord]:
    config = LinkConfig(
        delay=0.01,
        jitter=0.005,
        loss=0.05,
        burst_loss=GilbertElliott(0.01, 0.3),
        duplicate=0.02,
        reorder=0.05,
        corrupt=0.02,
        rate=10e6,
        queue_bytes=20_000,
    )
    net = SimNetwork(seed=seed, default_link=config, trace=True)
    a, b = Toy(), Echo()
    net.attach(A, a)
    net.attach(B, b)
    a.send(B, 500, size=200)
    net.run(timeout=10.0)
    return net.trace_records


def test_same_seed_replays_identically_and_other_seed_differs() -> None:
    first = lossy_trace(42)
    assert {r.fate for r in first} == {"sent", "delivered", "lost", "queue_drop"}
    assert lossy_trace(42) == first
    assert lossy_trace(43) != first


# -- timers and the event loop -------------------------------------------------------------------


def test_timers_fire_exactly_at_deadlines_amid_traffic() -> None:
    net = SimNetwork(seed=1, default_link=LinkConfig(delay=0.037))
    ticker, a, b = Ticker(0.1, count=10), Toy(), Echo()
    net.attach(("198.18.0.3", 3), ticker)
    net.attach(A, a)
    net.attach(B, b)
    a.send(B, 5)
    net.run(timeout=5.0)
    assert [deadline for deadline, _ in ticker.fired] == [k * 0.1 for k in range(1, 11)]
    assert all(now == deadline for deadline, now in ticker.fired)
    assert net.now == 1.0


def test_timer_already_due_is_handled_at_current_time() -> None:
    net = SimNetwork(seed=1, start_time=5.0)
    ticker = Ticker(1.0, count=1)
    net.attach(A, ticker)
    assert net.step()
    assert ticker.fired == [(1.0, 5.0)]
    assert not net.step()
    assert net.now == 5.0


def test_timer_rearmed_in_the_past_is_stopped_by_max_steps() -> None:
    class Stuck(Toy):
        def next_timer(self) -> float | None:
            return 0.0

        def handle_timer(self, now: float) -> None:
            pass

    net = SimNetwork(seed=1)
    net.attach(A, Stuck())
    with pytest.raises(SimulationTimeout):
        net.run(timeout=1.0, max_steps=1000)
    assert net.now == 0.0


def test_runaway_sender_is_stopped() -> None:
    class Runaway(Toy):
        def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
            return [(b"again", B)]

    net = SimNetwork(seed=1)
    with pytest.raises(SimulationTimeout):
        net.attach(A, Runaway())


def test_run_until_stops_when_condition_holds() -> None:
    net = SimNetwork(seed=1)
    ticker = Ticker(1.0)
    net.attach(A, ticker)
    assert net.run(lambda: True, timeout=10.0) == 0.0
    assert net.run(lambda: len(ticker.fired) >= 3, timeout=10.0) == 3.0
    assert len(ticker.fired) == 3


def test_run_raises_when_condition_never_holds() -> None:
    net = SimNetwork(seed=1)
    net.attach(A, Ticker(1.0))
    with pytest.raises(SimulationTimeout):
        net.run(lambda: False, timeout=10.5)
    assert net.now == 10.5


def test_run_raises_when_condition_cannot_hold_any_more() -> None:
    net, a, _ = pair(LinkConfig(delay=0.1))
    a.send(B, 1)
    with pytest.raises(SimulationTimeout):
        net.run(lambda: False, timeout=10.0)
    assert net.now == 0.1


def test_run_without_condition_stops_by_itself_or_at_timeout() -> None:
    net, a, _ = pair(LinkConfig(delay=0.25))
    a.send(B, 1)
    assert net.run(timeout=10.0) == 0.25
    assert net.run(timeout=10.0) == 0.25  # nothing pending: returns at once
    net.attach(("198.18.0.3", 3), Ticker(1.0))
    assert net.run(timeout=2.5) == 2.75


def test_run_for_advances_time_exactly() -> None:
    net = SimNetwork(seed=1, start_time=2.0)
    ticker = Ticker(0.5, start=2.0)
    net.attach(A, ticker)
    net.run_for(1.0)
    assert net.now == 3.0
    assert [now for _, now in ticker.fired] == [2.5, 3.0]  # a deadline at the end is processed
    idle = SimNetwork(seed=1)
    idle.run_for(0.3)
    idle.run_for(0.3)
    assert idle.now == 0.6


def test_step_processes_one_instant() -> None:
    net, a, b = pair(LinkConfig(delay=0.1, rate=8e6))
    assert not net.step()
    a.send(B, 2, size=1000)
    assert net.step()
    assert len(b.received) == 1
    assert net.step()
    assert len(b.received) == 2
    assert not net.step()


# -- filters, inject, detach, trace, pcap --------------------------------------------------------


def test_filters_drop_and_can_be_removed() -> None:
    net, a, b = pair(trace=True)
    calls: list[tuple[float, Address, Address]] = []

    def drop_odd(now: float, src: Address, dst: Address, data: bytes) -> bool:
        calls.append((now, src, dst))
        return number(data) % 2 == 1

    remove = net.add_filter(drop_odd)
    a.send(B, 6)
    net.run(timeout=1.0)
    assert b.numbers() == [0, 2, 4]
    assert calls == [(0.0, A, B)] * 6
    assert [r.fate for r in net.trace_records].count("filtered") == 3
    assert net.link_stats(A[0], B[0]).sent == 3
    remove()
    remove()
    a.send(B, 2, first=10)
    net.run(timeout=1.0)
    assert b.numbers() == [0, 2, 4, 10, 11]


def test_inject_delivers_raw_bytes_from_a_fake_source() -> None:
    net, _, b = pair(LinkConfig(loss=1.0), trace=True)
    stray: Address = ("198.19.9.9", 9)
    net.inject(stray, B, b"garbage", delay=0.25)
    net.inject(stray, ("198.18.9.9", 1), b"nobody")
    net.run(timeout=1.0)
    assert b.received == [(0.25, b"garbage", stray)]
    assert net.link_stats(stray[0], B[0]).delivered == 0
    assert [(r.time, r.fate) for r in net.trace_records if r.data == b"nobody"] == [
        (0.0, "sent"),
        (0.0, "no_route"),
    ]


def test_detached_destination_is_no_route() -> None:
    net, a, b = pair(LinkConfig(delay=0.1), trace=True)
    a.send(B, 1)
    net.run_for(0.05)
    net.detach(B)
    net.run(timeout=1.0)
    assert b.received == []
    assert net.trace_records[-1] == TraceRecord(0.1, A, B, numbered(0), "no_route")
    assert net.link_stats(A[0], B[0]).delivered == 0


def test_trace_records_delivery_time_and_delivered_bytes() -> None:
    net, a, b = pair(LinkConfig(delay=0.02, corrupt=1.0), trace=True)
    a.send(B, 1)
    net.run(timeout=1.0)
    sent, delivered = net.trace_records
    assert sent == TraceRecord(0.0, A, B, numbered(0), "sent")
    assert delivered.fate == "delivered"
    assert (delivered.time, delivered.src, delivered.dst) == (0.02, A, B)
    assert delivered.data == b.received[0][1] != numbered(0)


def test_trace_is_empty_by_default() -> None:
    net, a, _ = pair()
    a.send(B, 3)
    net.run(timeout=1.0)
    assert net.trace_records == []


def test_pcap_written_at_delivery() -> None:
    class Sink:
        def __init__(self) -> None:
            self.rows: list[tuple[float, Address, Address, bytes]] = []

        def write(self, timestamp: float, src: Address, dst: Address, segment_bytes: bytes) -> None:
            self.rows.append((timestamp, src, dst, segment_bytes))

    sink = Sink()
    net = SimNetwork(seed=1, default_link=LinkConfig(delay=0.03), pcap=sink)
    a, b = Toy(), Echo()
    net.attach(A, a)
    net.attach(B, b)
    a.send(B, 1)
    net.run(timeout=1.0)
    assert sink.rows == [
        (0.03, A, B, numbered(0)),
        (pytest.approx(0.06, abs=1e-12), B, A, numbered(0)),
    ]


def test_link_config_validates() -> None:
    with pytest.raises(ValueError):
        LinkConfig(loss=1.5)
    with pytest.raises(ValueError):
        LinkConfig(delay=-1.0)
    with pytest.raises(ValueError):
        GilbertElliott(p_good_to_bad=-0.1, p_bad_to_good=0.5)
