"""LEDBAT (RFC 6817) on synthetic ACKs, with RTT samples standing in for one-way delay.

MSS is 1000 bytes. RFC 6817 2.4.2: queuing_delay = FILTER(current_delays) - BASE_DELAY()
(MIN filter here), off_target = (TARGET - queuing_delay) / TARGET and
cwnd += GAIN * off_target * bytes_newly_acked * MSS / cwnd, GAIN = 1, TARGET = 100 ms.
"""

from __future__ import annotations

import pytest

from utcp._congestion.ledbat import Ledbat

MSS = 1000
BIG_FLIGHT = 1 << 30  # flightsize never caps unless a test says so


def ledbat(**options: float) -> Ledbat:
    return Ledbat(mss=MSS, initial_window=10, **options)


def ack(
    cc: Ledbat,
    now: float,
    rtt: float | None,
    *,
    acked: int = MSS,
    in_flight: int = BIG_FLIGHT,
    app_limited: bool = False,
) -> None:
    cc.on_ack(now=now, acked=acked, rtt=rtt, in_flight=in_flight, app_limited=app_limited)


def test_starts_at_two_segments_without_slow_start() -> None:
    cc = ledbat()
    # RFC 6817 2.5: INIT_CWND SHOULD be 2 (whatever the TCP initial window).
    assert cc.cwnd == 2 * MSS
    assert not cc.in_slow_start()


def test_grows_below_target() -> None:
    cc = ledbat()
    ack(cc, 1.0, 0.050)
    # queuing delay 0, off_target = 1: cwnd += 1000 * 1000 / 2000 = 500
    assert cc.cwnd == 2500
    ack(cc, 1.001, 0.050)
    # cwnd += 1000 * 1000 / 2500 = 400
    assert cc.cwnd == 2900


def test_half_target_grows_half_as_fast() -> None:
    cc = ledbat()
    ack(cc, 0.0, 0.050)  # base 50 ms, cwnd 2000 -> 2500
    ack(cc, 10.0, 0.100)
    # RFC 6817 2.5: no current sample older than an RTT, so the 50 ms one is dropped and
    # the filter sees 100 ms: queuing 50 ms, off_target = 0.5, cwnd += 0.5 * 1e6 / 2500.
    assert cc.queuing_delay() == pytest.approx(0.050)
    assert cc.cwnd == 2700


def test_at_target_holds() -> None:
    cc = ledbat()
    cc.cwnd = 10 * MSS
    ack(cc, 0.0, 0.050)  # 10000 + 1e6 / 10000 = 10100
    ack(cc, 10.0, 0.150)  # queuing delay = TARGET: off_target = 0
    assert cc.cwnd == 10_100


def test_shrinks_above_target() -> None:
    cc = ledbat()
    cc.cwnd = 10 * MSS
    ack(cc, 0.0, 0.050)
    assert cc.cwnd == 10_100
    ack(cc, 10.0, 0.250)
    # queuing 200 ms: off_target = (0.1 - 0.2) / 0.1 = -1; cwnd -= 1e6 / 10100 = 99.0099
    assert cc.cwnd == 10_000  # 10000.990


def test_current_filter_needs_four_high_samples() -> None:
    cc = ledbat()
    cc.cwnd = 10 * MSS
    ack(cc, 0.0, 0.050)
    before = cc.cwnd
    # Samples 1 ms apart: the MIN over the last CURRENT_FILTER = 4 still holds the 50 ms one
    # for three more ACKs (cwnd keeps growing); the fourth high sample pushes it out.
    for i in range(3):
        ack(cc, 0.001 * (i + 1), 0.250)
        assert cc.cwnd > before
        before = cc.cwnd
    exact = cc._exact_cwnd()
    ack(cc, 0.004, 0.250)
    assert cc.queuing_delay() == pytest.approx(0.200)
    assert cc._exact_cwnd() == pytest.approx(exact - MSS * MSS / exact)


def test_flightsize_cap_and_min_cwnd() -> None:
    cc = ledbat()
    cc.cwnd = 10 * MSS
    ack(cc, 0.0, 0.050, in_flight=5 * MSS)
    # RFC 6817 2.4.2: cwnd = min(cwnd, flightsize + ALLOWED_INCREASE * MSS) = 6000.
    assert cc.cwnd == 6 * MSS
    ack(cc, 10.0, 1.050)
    # queuing 1 s: off_target = -9, cwnd -= 9 * 1e6 / 6000 = 1500 -> 4500
    assert cc.cwnd == 4500
    ack(cc, 10.001, 1.050)  # -9 * 1e6 / 4500 = -2000 -> 2500
    ack(cc, 10.002, 1.050)  # -9 * 1e6 / 2500 = -3600 -> floor MIN_CWND * MSS
    assert cc.cwnd == 2 * MSS


def test_loss_halves_down_to_min_cwnd() -> None:
    cc = ledbat()
    cc.cwnd = 10 * MSS
    # RFC 6817 2.4.2: cwnd = min(cwnd, max(cwnd / 2, MIN_CWND * MSS)).
    cc.on_loss(now=1.0, in_flight=10 * MSS)
    assert cc.cwnd == 5 * MSS
    cc.on_recovery_end(now=1.5)  # no deflation to ssthresh: the loss response stands
    assert cc.cwnd == 5 * MSS
    cc.cwnd = 3 * MSS
    cc.on_loss(now=2.0, in_flight=3 * MSS)
    assert cc.cwnd == 2 * MSS
    cc.on_loss(now=3.0, in_flight=2 * MSS)
    assert cc.cwnd == 2 * MSS


def test_timeout_resets_to_one_segment_and_forgets_current_delays() -> None:
    cc = ledbat()
    ack(cc, 0.0, 0.050)
    cc.on_rto(now=1.0, in_flight=3 * MSS)
    # RFC 6817 2.4.2: cwnd = 1 MSS and the current delays are forgotten; base delays stay.
    assert cc.cwnd == MSS
    assert cc.queuing_delay() is None
    assert cc.base_delay() == 0.050


def test_base_delay_is_the_minimum_of_ten_one_minute_buckets() -> None:
    cc = ledbat()
    ack(cc, 1.0, 0.050)
    ack(cc, 30.0, 0.040)  # same minute: that bucket's minimum drops to 40 ms
    assert cc.base_delay() == 0.040
    for minute in range(1, 10):
        ack(cc, minute * 60.0 + 1, 0.080)
    # RFC 6817 2.5: BASE_HISTORY = 10 buckets, minutes 0..9: minute 0 still counts.
    assert len(cc.base_delays) == 10
    assert cc.base_delay() == 0.040
    ack(cc, 10 * 60.0 + 1, 0.080)  # minute 10 pushes minute 0 out
    assert cc.base_delay() == 0.080


def test_target_is_configurable_but_at_most_100_ms() -> None:
    cc = ledbat(target=0.050)
    cc.cwnd = 10 * MSS
    ack(cc, 0.0, 0.050)  # 10100
    ack(cc, 10.0, 0.100)  # queuing 50 ms = TARGET: no change
    assert cc.cwnd == 10_100
    with pytest.raises(ValueError):
        ledbat(target=0.2)  # RFC 6817 2.5: TARGET MUST be 100 ms or less
    with pytest.raises(ValueError):
        ledbat(target=0.0)


def test_app_limited_no_growth_but_still_yields() -> None:
    cc = ledbat()
    cc.cwnd = 10 * MSS
    ack(cc, 0.0, 0.050, app_limited=True)
    assert cc.cwnd == 10 * MSS  # RFC 7661 4.4: no growth while rate-limited
    ack(cc, 10.0, 0.250, app_limited=True)
    assert cc.cwnd == 9900  # 10000 - 1e6 / 10000: the decrease still applies


def test_ack_without_any_delay_sample_changes_nothing() -> None:
    cc = ledbat()
    ack(cc, 0.0, None)
    assert cc.cwnd == 2 * MSS
