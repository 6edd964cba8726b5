"""bench/netem/spec.py: netem's own syntax (tc-netem(8)) parsed into values, tc's defaults and
consistency checks included, and every refusal a clear ValueError."""

from __future__ import annotations

import dataclasses

import pytest

from bench.netem.spec import (
    Chance,
    Delay,
    GilbertElliottLoss,
    NetemSpec,
    RandomLoss,
    Rate,
    Reorder,
    StateLoss,
    parse_rate,
    parse_spec,
    parse_time,
)

PARSED = [
    ("", NetemSpec()),
    ("delay 25ms", NetemSpec(delay=Delay(0.025))),
    ("latency 1s", NetemSpec(delay=Delay(1.0))),
    ("delay 300", NetemSpec(delay=Delay(300e-6))),  # tc: a bare time is microseconds
    ("delay 100ms 10ms", NetemSpec(delay=Delay(0.1, 0.01))),
    ("delay 100ms 10ms 25%", NetemSpec(delay=Delay(0.1, 0.01, 0.25))),
    (
        "delay 50ms 10ms distribution normal",
        NetemSpec(delay=Delay(0.05, 0.01, 0.0, "normal")),
    ),
    ("delay 1.5ms 500us", NetemSpec(delay=Delay(0.0015, 0.0005))),
    ("loss 1%", NetemSpec(loss=RandomLoss(0.01))),
    ("loss random 0.1% 25%", NetemSpec(loss=RandomLoss(0.001, 0.25))),
    ("drop 2", NetemSpec(loss=RandomLoss(0.02))),  # tc: a bare percentage is still percent
    # tc's gemodel defaults: r = 1 - p, 1-h = 100 %, 1-k = 0.
    ("loss gemodel 1%", NetemSpec(loss=GilbertElliottLoss(0.01, 0.99, 1.0, 0.0))),
    ("loss gemodel 1% 16.7%", NetemSpec(loss=GilbertElliottLoss(0.01, 0.167, 1.0, 0.0))),
    (
        "loss gemodel 1% 10% 70% 0.1%",
        NetemSpec(loss=GilbertElliottLoss(0.01, 0.1, 0.7, 0.001)),
    ),
    # tc's 4-state defaults: p31 = 1 - p13, p32 = 0, p23 = 100 %, p14 = 0.
    ("loss state 5%", NetemSpec(loss=StateLoss(0.05, 0.95, 0.0, 1.0, 0.0))),
    ("loss state 1% 30% 2% 40% 0.5%", NetemSpec(loss=StateLoss(0.01, 0.3, 0.02, 0.4, 0.005))),
    ("duplicate 0.5%", NetemSpec(duplicate=Chance(0.005))),
    ("corrupt 0.1% 10%", NetemSpec(corrupt=Chance(0.001, 0.1))),
    # tc makes the gap 1 when reorder is given without one.
    ("delay 10ms reorder 25%", NetemSpec(delay=Delay(0.01), reorder=Reorder(0.25, 0.0, 1))),
    (
        "delay 10ms reorder 25% 50% gap 5",
        NetemSpec(delay=Delay(0.01), reorder=Reorder(0.25, 0.5, 5)),
    ),
    ("rate 20mbit", NetemSpec(rate=Rate(20e6))),
    ("rate 1gbit", NetemSpec(rate=Rate(1e9))),
    ("rate 125kbps", NetemSpec(rate=Rate(1e6))),  # bytes per second
    ("rate 1Mibit", NetemSpec(rate=Rate(1024.0**2))),
    ("rate 1mbit 20 100 -5", NetemSpec(rate=Rate(1e6, 20, 100, -5))),
    ("limit 100", NetemSpec(limit=100)),
    ("seed 7", NetemSpec(seed=7)),
    (
        "delay 25ms 5ms distribution normal loss 1% reorder 10% 50% duplicate 0.5% "
        "corrupt 0.1% rate 20mbit limit 1000",
        NetemSpec(
            limit=1000,
            delay=Delay(0.025, 0.005, 0.0, "normal"),
            loss=RandomLoss(0.01),
            duplicate=Chance(0.005),
            reorder=Reorder(0.1, 0.5, 1),
            corrupt=Chance(0.001),
            rate=Rate(20e6),
        ),
    ),
]


def _flat(value: object) -> list[object]:
    """The spec's fields in order, nested values flattened (for approximate comparison)."""
    if dataclasses.is_dataclass(value):
        return [type(value).__name__] + [
            item for f in dataclasses.fields(value) for item in _flat(getattr(value, f.name))
        ]
    return [value]


def _assert_same(got: NetemSpec, expected: NetemSpec) -> None:
    got_flat, expected_flat = _flat(got), _flat(expected)
    assert len(got_flat) == len(expected_flat), (got, expected)
    for a, b in zip(got_flat, expected_flat, strict=True):
        if isinstance(b, float):
            assert a == pytest.approx(b, rel=1e-9, abs=1e-12), (got, expected)
        else:
            assert a == b, (got, expected)


@pytest.mark.parametrize(("text", "expected"), PARSED)
def test_spec_parses_to_values(text: str, expected: NetemSpec) -> None:
    _assert_same(parse_spec(text), expected)


@pytest.mark.parametrize(("text", "expected"), PARSED)
def test_canonical_tc_arguments_parse_back_to_the_same_spec(text: str, expected: NetemSpec) -> None:
    _assert_same(parse_spec(" ".join(expected.to_tc_args())), expected)


def test_no_spec_is_a_clean_link_with_netems_default_limit() -> None:
    assert parse_spec(None) == NetemSpec()
    assert NetemSpec().limit == 1000


ERRORS = [
    ("delay", "delay TIME expected"),
    ("delay fast", "not a time"),
    ("delay 10parsecs", "not a time"),
    ("loss", "loss PERCENT or model expected"),
    ("loss 101%", "above 100%"),
    ("loss 1% loss 2%", "given twice"),
    ("loss bursty 1%", "unknown loss model"),
    ("loss gemodel", "loss gemodel P expected"),
    ("reorder 10%", "reordering not possible without specifying some delay"),
    ("delay 10ms gap 5", "gap specified without reorder probability"),
    ("delay 10ms reorder 10% gap 0", "gap must be >= 1"),
    ("delay 10ms distribution normal", "distribution specified but no latency and jitter"),
    ("delay 10ms 1ms distribution lognormal", "unknown distribution"),
    ("rate fast", "not a rate"),
    ("rate 20furlongs", "not a rate"),
    ("rate 0bit", "rate must be positive"),
    ("rate 50%", "relative to the device"),
    ("limit many", "limit must be an integer"),
    ("limit -1", "limit must be >= 0"),
    ("jitter 5ms", "unknown netem option 'jitter'"),
    ("loss 1% ecn", "'ecn' is not supported"),
    ("slot 1ms", "'slot' is not supported"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_bad_spec_raises_value_error_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_spec(text)


@pytest.mark.parametrize(
    ("token", "seconds"),
    [("1s", 1.0), ("2sec", 2.0), ("25ms", 0.025), ("25msec", 0.025), ("10us", 10e-6), ("7", 7e-6)],
)
def test_time_units_are_tcs(token: str, seconds: float) -> None:
    assert parse_time(token) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("token", "bits"),
    [("100bit", 100.0), ("1kbit", 1e3), ("20mbit", 20e6), ("2gbit", 2e9), ("1bps", 8.0),
     ("1mbps", 8e6), ("1kibit", 1024.0), ("1000", 1000.0), ("20MBIT", 20e6)],
)  # fmt: skip
def test_rate_units_are_tcs(token: str, bits: float) -> None:
    assert parse_rate(token) == pytest.approx(bits)
