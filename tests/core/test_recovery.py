"""Loss recovery on a simulated long path (RFC 5681, 6582, 6675, 6937, 8985, 2883, 3522).

The path of issue 4: 50 ms RTT, a 20 Mbit/s bottleneck with a one-BDP drop-tail queue,
virtual time, fixed seeds.
"""

from __future__ import annotations

import hashlib

import pytest
from _factories import route_method

from utcp import Config
from utcp._wire import decode_untrusted
from utcp.testing import CLIENT_ADDR, SERVER_ADDR, HostPair, LinkConfig, random_payload
from utcp.testing._flows import Flow, bottleneck, run_flows

RTT = 0.050
RATE = 20e6
PATH = bottleneck(RTT, RATE)  # queue = 1 BDP = 125,000 bytes
BACK = LinkConfig(delay=RTT / 2)


class DropNth:
    """Drops the n-th data segment (by first transmission) from the client, once."""

    def __init__(self, pick: object) -> None:
        self.pick = pick
        self.dropped: list[tuple[float, int, int]] = []
        self.data_seen = 0

    def __call__(self, now: float, src: tuple[str, int], dst: tuple[str, int], data: bytes) -> bool:
        if src != CLIENT_ADDR or self.dropped:
            return False
        seg = decode_untrusted(data)
        if not seg.payload:
            return False
        self.data_seen += 1
        assert callable(self.pick)
        if self.pick(self.data_seen, seg):
            self.dropped.append((now, seg.seq, len(seg.payload)))
            return True
        return False


def run_transfer(
    size: int, config: Config, drop: DropNth | None = None, link: LinkConfig = PATH, seed: int = 1
) -> tuple[HostPair, object, object]:
    pair = HostPair(
        seed=seed, link=link, reverse_link=BACK, client_config=config, server_config=config
    )
    if drop is not None:
        pair.net.add_filter(drop)
    client, server = pair.connect()
    data = random_payload(seed, size)
    result = pair.transfer(data, b"", connection=(client, server))
    assert result.intact
    assert result.server.digest_received() == hashlib.sha256(data).hexdigest()
    return pair, client, server


@pytest.mark.parametrize("cc", ["newreno", "cubic"])
def test_single_loss_is_repaired_by_fast_retransmit_not_rto(cc: str) -> None:
    # Segment 3000 of ~7200 (10 MB): well after slow start, in steady state.
    drop = DropNth(lambda n, seg: n == 3000)
    config = Config(congestion_control=cc)
    _pair, client, _server = run_transfer(10_000_000, config, drop)
    assert len(drop.dropped) == 1
    stats = client.stats  # type: ignore[attr-defined]
    assert stats.rto_expiries == 0
    assert stats.fast_retransmits >= 1
    assert stats.tlp_probes == 0 or stats.retransmits >= 1


@pytest.mark.parametrize("cc", ["newreno", "cubic"])
def test_lost_final_segment_is_repaired_by_tail_loss_probe(cc: str) -> None:
    size = 200_000
    config = Config(congestion_control=cc)
    pair = HostPair(seed=3, link=PATH, reverse_link=BACK, config=config)
    client, server = pair.connect()
    # The segment that carries the last data byte, first transmission only.
    last_byte_seq = (client.iss + 1 + size) % 2**32
    drop = DropNth(lambda n, seg: (seg.seq + len(seg.payload)) % 2**32 == last_byte_seq)
    pair.net.add_filter(drop)
    data = random_payload(3, size)
    assert client.send(data) == size
    received = bytearray()

    def all_delivered() -> bool:
        received.extend(server.receive(1 << 20))
        return len(received) == size and client.snd_una == client.snd_nxt

    pair.net.run(all_delivered, timeout=60.0)
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    assert len(drop.dropped) == 1
    assert client.stats.rto_expiries == 0
    assert client.stats.tlp_probes == 1
    # RFC 8985 7.4.2: the probe repaired a real loss, which is answered as congestion once
    # the ACK passes TLP.end_seq with no D-SACK for the probe: here, when more data is.
    assert client.stats.tlp_recoveries == 0
    client.send(b"more")
    pair.net.run(lambda: client.snd_una == client.snd_nxt, timeout=5.0)
    assert client.stats.tlp_recoveries == 1


def test_reordering_without_loss_causes_no_reductions_once_rack_adapts() -> None:
    # 25% of segments held back 10 ms (more than 3 segment times at 20 Mbit/s); no loss.
    link = LinkConfig(delay=RTT / 2, rate=RATE, reorder=0.25, reorder_delay=0.010)
    config = Config(congestion_control="cubic")
    run = run_flows([Flow(config=config, stop=12.0)], seed=5, link=link, duration=12.0)
    (flow,) = run.flows
    stats = flow.client.stats  # type: ignore[union-attr]
    assert run.net.link_stats(CLIENT_ADDR[0], SERVER_ADDR[0]).queue_drops == 0
    assert flow.server is not None and flow.received > 0
    # RACK may need a D-SACK or two to learn the reordering; after that, nothing is
    # retransmitted and the window is never cut.
    assert stats.fast_retransmits <= 2
    assert stats.rto_expiries == 0
    assert stats.undos == stats.fast_retransmits  # each early reduction proved spurious
    assert flow.client.rack.reordering_seen  # type: ignore[union-attr]
    goodput = flow.received_between(2.0, 12.0) * 8 / 10.0
    assert goodput > 0.8 * RATE


def test_two_cubic_flows_share_the_bottleneck() -> None:
    config = Config(congestion_control="cubic")
    run = run_flows(
        [Flow(config=config), Flow(config=config, start=0.5)], seed=7, link=PATH, duration=30.5
    )
    a, b = run.flows
    got_a = a.received_between(0.5, 30.5)
    got_b = b.received_between(0.5, 30.5)
    share = got_a / (got_a + got_b)
    assert 0.35 <= share <= 0.65, share
    assert (got_a + got_b) * 8 / 30.0 > 0.8 * RATE  # and together they fill the link


def test_ledbat_yields_to_cubic() -> None:
    # LEDBAT's target is 100 ms of queueing delay: the queue here holds 3 BDP (150 ms), so
    # CUBIC pushes the delay past LEDBAT's target and LEDBAT backs off.
    link = bottleneck(RTT, RATE, queue_bdp=3.0)
    scavenger = Flow(config=Config(congestion_control="ledbat"))
    primary = Flow(config=Config(congestion_control="cubic"), start=10.0)
    run_flows([scavenger, primary], seed=9, link=link, duration=45.0)
    # LEDBAT grows by about one segment per RTT: it fills the link within ~5 s.
    alone = scavenger.received_between(6.0, 10.0) * 8 / 4.0
    assert alone > 0.7 * RATE  # alone, the scavenger uses the link

    def primary_share(t0: float, t1: float) -> float:
        got_s = scavenger.received_between(t0, t1)
        got_p = primary.received_between(t0, t1)
        return got_p / (got_s + got_p)

    # Together, it yields. Without a loss, RFC 6817's delay-driven decrease takes at most
    # GAIN * MSS per RTT, so the yielding is gradual: the primary's share keeps growing
    # and the link stays full.
    early, late = primary_share(15.0, 20.0), primary_share(35.0, 45.0)
    assert late > early + 0.1
    assert late > 0.85
    both = scavenger.received_between(30.0, 45.0) + primary.received_between(30.0, 45.0)
    assert both * 8 / 15.0 > 0.9 * RATE


def test_loss_response_is_beta_times_flight_size_at_most_cwnd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # RFC 9438 4.6 / RFC 5681 3.1: ssthresh = beta * FlightSize, where FlightSize counts
    # data SACKed before the loss was detected (RFC 5681 2) but not data that SACKs let
    # out beyond cwnd (RFC 5681 3.2, limited transmit). So the cut is beta * cwnd for a
    # cwnd-limited sender even when much of its window was SACKed or still waiting for the
    # pacer, where the pipe alone would cut deeper.
    drop = DropNth(lambda n, seg: n == 3000)
    config = Config(congestion_control="cubic")
    pair = HostPair(seed=1, link=PATH, reverse_link=BACK, client_config=config)
    pair.net.add_filter(drop)
    client, server = pair.connect()
    cc = client.cc
    seen: list[tuple[int, int, int, int]] = []
    on_loss = cc.on_loss

    def record(*, now: float, in_flight: int) -> None:
        sb = client.scoreboard
        window, flight = cc.cwnd, (client.snd_nxt - client.snd_una) % 2**32
        on_loss(now=now, in_flight=in_flight)
        seen.append((window, flight, sb.pipe + sb.lost_bytes, cc.ssthresh))

    route_method(monkeypatch, cc, "on_loss", record)
    data = random_payload(4, 6_000_000)
    assert pair.transfer(data, b"", connection=(client, server)).intact
    assert len(drop.dropped) == 1
    assert len(seen) >= 2  # the slow-start overshoot, then the dropped segment
    for window, flight, _pipe_and_lost, ssthresh in seen:
        assert ssthresh == int(min(window, flight) * 0.7)
    # At least one of them had data SACKed when the loss was detected: FlightSize, not the
    # pipe, was the base of the cut.
    assert any(flight > p for _w, flight, p, _s in seen)


@pytest.mark.parametrize("cc", ["newreno", "cubic"])
def test_repeated_timeout_holds_ssthresh(cc: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # RFC 5681 3.1: when a segment the retransmission timer already resent times out
    # again, ssthresh is held constant; cwnd stays at one segment.
    config = Config(congestion_control=cc)
    pair = HostPair(seed=2, link=PATH, reverse_link=BACK, client_config=config)
    client, _server = pair.connect()
    client.send(random_payload(5, 600_000))
    pair.net.run(lambda: client.stats.bytes_acked >= 300_000, timeout=30.0)
    after: list[tuple[int, int]] = []
    on_rto = client.cc.on_rto

    def record(*, now: float, in_flight: int, repeated: bool = False) -> None:
        on_rto(now=now, in_flight=in_flight, repeated=repeated)
        after.append((client.cc.ssthresh, client.cc.cwnd))

    route_method(monkeypatch, client.cc, "on_rto", record)
    pair.net.add_filter(lambda now, src, dst, data: True)  # the path goes dark
    pair.net.run(lambda: client.stats.rto_expiries >= 3, timeout=60.0)
    assert len(after) == 3
    first = after[0][0]
    assert first >= 2 * client.effective_mss
    assert after == [(first, client.effective_mss)] * 3
