"""bench/netem/emulator.py against netem's semantics and the models' closed forms.

Deterministic: every queue is seeded and time is passed in. Each statistical assertion is
bounded at 4 standard errors of the estimate (stated beside it), so a correct emulator fails
one with probability below 1e-4; the seeds are fixed, so the outcome never changes between
runs anyway.
"""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from bench.netem.emulator import NetemQueue
from bench.netem.spec import parse_spec

PACKET = bytes(range(100)) * 10  # 1000 bytes


def _run(
    spec: str, n: int, *, spacing: float = 1e-3, seed: int = 1
) -> tuple[NetemQueue[int], list[tuple[float, bytes, int]]]:
    """Offer n packets ``spacing`` apart (tag = index), then release everything."""
    queue: NetemQueue[int] = NetemQueue(parse_spec(spec), seed=seed)
    released: list[tuple[float, bytes, int]] = []
    for i in range(n):
        now = i * spacing
        released += queue.release(now)
        queue.enqueue(PACKET, now, i)
    released += queue.release(math.inf)
    return queue, released


def _delays(released: list[tuple[float, bytes, int]], spacing: float = 1e-3) -> list[float]:
    """Each packet's delay, in the order the packets were offered."""
    return [due - tag * spacing for due, _data, tag in sorted(released, key=lambda r: r[2])]


def _within(measured: float, expected: float, standard_error: float, what: str) -> None:
    bound = 4 * standard_error
    assert abs(measured - expected) <= bound, (
        f"{what}: measured {measured:.6g}, expected {expected:.6g} +- {bound:.3g} (4 sigma)"
    )


def test_constant_delay_releases_every_packet_exactly_delay_later() -> None:
    queue, released = _run("delay 25ms", 1000)
    assert [tag for _d, _p, tag in released] == list(range(1000))
    assert all(d == pytest.approx(0.025) for d in _delays(released))
    assert queue.stats.sent == queue.stats.received == 1000


def test_uniform_jitter_mean_and_standard_deviation() -> None:
    n = 20_000
    _queue, released = _run("delay 100ms 10ms", n)
    delays = _delays(released)
    sigma = 0.010 / math.sqrt(3)  # uniform on [delay - jitter, delay + jitter)
    _within(statistics.fmean(delays), 0.100, sigma / math.sqrt(n), "mean delay")
    # SE of a sample standard deviation: sigma * sqrt((kurtosis - 1) / 4n); uniform: 1.8.
    _within(statistics.pstdev(delays), sigma, sigma * math.sqrt(0.8 / (4 * n)), "jitter std")
    assert min(delays) >= 0.090 and max(delays) < 0.110


def test_normal_jitter_mean_and_standard_deviation() -> None:
    n = 20_000
    _queue, released = _run("delay 100ms 10ms distribution normal", n)
    delays = _delays(released)
    sigma = 0.010
    _within(statistics.fmean(delays), 0.100, sigma / math.sqrt(n), "mean delay")
    _within(statistics.pstdev(delays), sigma, sigma * math.sqrt(2 / (4 * n)), "jitter std")
    # netem's tables stop at 4 jitters (int16 / NETEM_DIST_SCALE).
    assert min(delays) >= 0.060 and max(delays) <= 0.140


def test_pareto_jitter_is_skewed_with_netems_median() -> None:
    n = 20_000
    _queue, released = _run("delay 100ms 10ms distribution pareto", n)
    delays = sorted(_delays(released))
    # iproute2's pareto table: (u ** (-1/3) - 1.5) * 4/3 jitters; its median is at u = 1/2.
    expected_median = 0.100 + 0.010 * (0.5 ** (-1 / 3) - 1.5) * 4 / 3
    # SE of a sample median: 1 / (2 f(m) sqrt(n)); the density at the median, in seconds:
    # f(m) = (3 / 4) * 3 * u ** (4/3) / 0.010 at u = 1/2.
    density = 0.75 * 3 * 0.5 ** (4 / 3) / 0.010
    _within(delays[n // 2], expected_median, 1 / (2 * density * math.sqrt(n)), "median")
    assert statistics.fmean(delays) > delays[n // 2]  # right-skewed


def test_delay_correlation_keeps_the_mean_and_follows_netems_recurrence() -> None:
    n = 20_000
    _queue, released = _run("delay 100ms 10ms 50%", n)
    delays = _delays(released)
    # netem: u' = (1 - rho) u + rho u_prev, an AR(1) process: lag-1 autocorrelation rho and
    # variance shrunk by (1 - rho) / (1 + rho).
    rho = 0.5
    sigma = 0.010 / math.sqrt(3) * math.sqrt((1 - rho) / (1 + rho))
    inflation = math.sqrt((1 + rho) / (1 - rho))  # SE of a mean of an AR(1) series
    _within(statistics.fmean(delays), 0.100, sigma * inflation / math.sqrt(n), "mean delay")
    mean = statistics.fmean(delays)
    lag1 = sum((a - mean) * (b - mean) for a, b in itertools.pairwise(delays)) / sum(
        (a - mean) ** 2 for a in delays
    )
    _within(lag1, rho, math.sqrt((1 - rho**2) / n), "lag-1 autocorrelation")


def test_jitter_reorders_packets_as_netem_does() -> None:
    # Packets leave in release-time order, so a jitter wider than the spacing reorders.
    _queue, released = _run("delay 10ms 5ms", 2000)
    tags = [tag for _d, _p, tag in released]
    assert tags != sorted(tags)
    assert [d for d, _p, _t in released] == sorted(d for d, _p, _t in released)


@pytest.mark.parametrize(("percent", "n"), [(1.0, 100_000), (10.0, 50_000)])
def test_random_loss_rate(percent: float, n: int) -> None:
    queue, released = _run(f"loss {percent}%", n)
    p = percent / 100
    rate = queue.stats.dropped_loss / n
    _within(rate, p, math.sqrt(p * (1 - p) / n), "loss rate")
    assert len(released) + queue.stats.dropped_loss == n


def _loss_runs(spec: str, n: int) -> tuple[float, list[int]]:
    """Loss rate and the lengths of the runs of consecutive losses."""
    queue, released = _run(spec, n)
    delivered = {tag for _d, _p, tag in released}
    runs: list[int] = []
    run = 0
    for i in range(n):
        if i in delivered:
            if run:
                runs.append(run)
            run = 0
        else:
            run += 1
    if run:
        runs.append(run)
    return queue.stats.dropped_loss / n, runs


def test_gilbert_elliott_loss_rate_and_burst_length_match_the_closed_form() -> None:
    # The bursty scenario: p = 1 %, r = 16.7 %, every packet lost in the bad state.
    n = 100_000
    p, r = 0.01, 0.167
    rate, runs = _loss_runs("loss gemodel 1% 16.7%", n)
    stationary_bad = p / (p + r)
    # A two-state chain's estimate of its stationary probability has the binomial variance
    # inflated by (1 + lambda) / (1 - lambda), lambda = 1 - p - r.
    lam = 1 - p - r
    se = math.sqrt(stationary_bad * (1 - stationary_bad) / n * (1 + lam) / (1 - lam))
    _within(rate, stationary_bad, se, "GE loss rate")
    # Bursts are geometric with mean 1 / r (standard deviation sqrt(1 - r) / r).
    _within(statistics.fmean(runs), 1 / r, math.sqrt(1 - r) / r / math.sqrt(len(runs)), "burst")


def test_gilbert_elliott_with_partial_loss_in_each_state() -> None:
    n = 100_000
    p, r, loss_bad, loss_good = 0.02, 0.2, 0.5, 0.01
    rate, _runs = _loss_runs("loss gemodel 2% 20% 50% 1%", n)
    bad = p / (p + r)
    expected = bad * loss_bad + (1 - bad) * loss_good
    lam = 1 - p - r
    # Bound: the state estimate's variance (inflated as above) plus the per-packet draw's.
    se = math.sqrt(
        (loss_bad - loss_good) ** 2 * bad * (1 - bad) / n * (1 + lam) / (1 - lam)
        + expected * (1 - expected) / n
    )
    _within(rate, expected, se, "GE loss rate")


def test_four_state_loss_with_tcs_defaults_loses_p13() -> None:
    # "loss state 5%": p31 = 95 %, p32 = 0, so the lost state holds with 5 %: the stationary
    # loss rate is p13 / (p13 + p31) = 5 %, in bursts of mean 1 / p31.
    n = 100_000
    rate, runs = _loss_runs("loss state 5%", n)
    _within(rate, 0.05, math.sqrt(0.05 * 0.95 / n * 1.0), "4-state loss rate")
    _within(statistics.fmean(runs), 1 / 0.95, math.sqrt(0.05) / 0.95 / math.sqrt(len(runs)), "run")


def test_duplicate_rate_and_every_duplicate_is_released() -> None:
    n = 20_000
    queue, released = _run("duplicate 5%", n)
    _within(queue.stats.duplicated / n, 0.05, math.sqrt(0.05 * 0.95 / n), "duplicate rate")
    assert len(released) == n + queue.stats.duplicated == queue.stats.sent


def test_a_duplicate_draw_cancels_a_loss_draw_as_in_netem() -> None:
    # netem counts copies: duplicate makes 2, loss takes one away, and one copy is sent.
    queue, released = _run("duplicate 100% loss 100%", 100)
    assert len(released) == 100
    assert queue.stats.duplicated == 0 and queue.stats.dropped_loss == 0


def test_reorder_sends_the_chosen_fraction_at_once_ahead_of_delayed_packets() -> None:
    n = 20_000
    queue, released = _run("delay 10ms reorder 25%", n)
    _within(queue.stats.reordered / n, 0.25, math.sqrt(0.25 * 0.75 / n), "reorder rate")
    immediate = [tag for due, _p, tag in released if due == pytest.approx(tag * 1e-3)]
    assert len(immediate) == queue.stats.reordered
    tags = [tag for _d, _p, tag in released]
    assert tags != sorted(tags)  # the immediate ones overtook delayed ones


def test_reorder_gap_delays_gap_minus_one_packets_between_reorders() -> None:
    # gap 5: after a reordered packet the next four are always delayed, then each one is
    # reordered with 25 %: one reorder per 4 + 1/0.25 packets on average.
    n = 20_000
    queue, released = _run("delay 10ms reorder 25% gap 5", n)
    immediate = sorted(tag for due, _p, tag in released if due == pytest.approx(tag * 1e-3))
    assert min(b - a for a, b in itertools.pairwise(immediate)) >= 5
    cycle_mean, cycle_sd = 4 + 1 / 0.25, math.sqrt(0.75) / 0.25
    cycles = n / cycle_mean
    _within(queue.stats.reordered / n, 1 / cycle_mean, cycle_sd / cycle_mean**2 / math.sqrt(cycles),
            "reorder rate")  # fmt: skip


def test_corrupt_flips_exactly_one_bit_in_the_chosen_fraction() -> None:
    n = 20_000
    queue, released = _run("corrupt 10%", n)
    _within(queue.stats.corrupted / n, 0.10, math.sqrt(0.1 * 0.9 / n), "corrupt rate")
    changed = 0
    reference = int.from_bytes(PACKET, "big")
    for _d, data, _t in released:
        bits = bin(int.from_bytes(data, "big") ^ reference).count("1")
        assert bits in (0, 1)
        changed += bits
    assert changed == queue.stats.corrupted


def test_rate_releases_a_backlog_at_the_configured_rate() -> None:
    # 1000-byte packets offered at twice 10 Mbit/s: they leave one per 0.8 ms.
    n = 2000
    queue, released = _run("rate 10mbit limit 100000", n, spacing=0.4e-3)
    dues = [d for d, _p, _t in released]
    assert len(dues) == n
    gaps = [b - a for a, b in itertools.pairwise(dues)]
    assert all(g == pytest.approx(0.8e-3) for g in gaps)
    throughput = (n - 1) * len(PACKET) * 8 / (dues[-1] - dues[0])
    assert throughput == pytest.approx(10e6, rel=1e-9)
    assert queue.stats.dropped_limit == 0


def test_rate_below_capacity_adds_only_the_serialisation_time() -> None:
    _queue, released = _run("delay 10ms rate 10mbit", 100, spacing=2e-3)
    assert all(d == pytest.approx(0.010 + 0.8e-3) for d in _delays(released, 2e-3))


def test_rate_counts_packet_overhead_and_cells() -> None:
    # (1000 + 20) bytes in 100-byte cells: 11 cells of 100 + 5 bytes each = 1155 bytes.
    _queue, released = _run("rate 1mbit 20 100 5", 10, spacing=1.0)
    assert all(d == pytest.approx(1155 * 8 / 1e6) for d in _delays(released, 1.0))


def test_rate_counts_the_framing_the_caller_packets_lack() -> None:
    # The forwarder's TUN packets lack the 14-byte Ethernet header netem counts on a veth.
    queue: NetemQueue[int] = NetemQueue(parse_spec("rate 1mbit"), seed=1, framing=14)
    queue.enqueue(PACKET, 0.0, 0)
    assert queue.next_release() == pytest.approx(1014 * 8 / 1e6)


def test_limit_tail_drops_above_the_queue_length() -> None:
    queue: NetemQueue[int] = NetemQueue(parse_spec("rate 1mbit limit 10"), seed=1)
    for i in range(100):
        queue.enqueue(PACKET, 0.0, i)
    assert len(queue) == 10
    assert queue.stats.dropped_limit == 90 and queue.stats.max_queue == 10
    assert [tag for _d, _p, tag in queue.release(math.inf)] == list(range(10))


def test_netems_default_limit_is_1000_packets() -> None:
    queue: NetemQueue[int] = NetemQueue(parse_spec("delay 1s"), seed=1)
    for i in range(1500):
        queue.enqueue(PACKET, i * 1e-6, i)
    assert len(queue) == 1000 and queue.stats.dropped_limit == 500


def test_same_seed_replays_and_another_seed_differs() -> None:
    spec = "delay 20ms 5ms distribution normal loss 5% duplicate 2% corrupt 1%"
    first = _run(spec, 2000, seed=7)[1]
    assert _run(spec, 2000, seed=7)[1] == first
    assert _run(spec, 2000, seed=8)[1] != first


def test_next_release_tracks_the_earliest_due_packet() -> None:
    queue: NetemQueue[str] = NetemQueue(parse_spec("delay 10ms"), seed=1)
    assert queue.next_release() is None
    queue.enqueue(b"a", 1.0, "a")
    queue.enqueue(b"b", 1.002, "b")
    assert queue.next_release() == pytest.approx(1.010)
    assert queue.release(1.009) == []
    assert [t for _d, _p, t in queue.release(1.0105)] == ["a"]
    assert queue.next_release() == pytest.approx(1.012)
