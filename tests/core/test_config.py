"""``Config`` is checked when it is built, and its dead-peer defaults are the documented ones."""

from __future__ import annotations

import pytest

from utcp import Config, available_congestion_controls


def test_unknown_congestion_control_raises_at_config_listing_the_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        Config(congestion_control="bbr")
    message = str(info.value)
    assert "'bbr'" in message
    for name in available_congestion_controls():
        assert name in message


@pytest.mark.parametrize("name", ["cubic", "newreno", "reno", "ledbat", "CUBIC"])
def test_known_congestion_controls_are_accepted(name: str) -> None:
    assert Config(congestion_control=name).congestion_control == name


@pytest.mark.parametrize(
    "changes",
    [
        {"mss": "1200"},
        {"mss": 1200.0},
        {"keepalive": 1},
        {"user_timeout": True},
        {"connect_timeout": "30"},
        {"max_retransmissions": 3.5},
        {"congestion_control": None},
    ],
)
def test_wrong_types_raise_at_config(changes: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        Config(**changes)  # type: ignore[arg-type]


def test_replace_is_checked_too() -> None:
    with pytest.raises(ValueError):
        Config().replace(congestion_control="vegas")


def test_ints_are_accepted_for_float_fields() -> None:
    assert Config(connect_timeout=10, user_timeout=5).user_timeout == 5


def test_dead_peer_defaults() -> None:
    # README "Dead peers and timeouts" and the _config module docstring explain each one.
    c = Config()
    assert c.connect_timeout == 30.0
    assert c.user_timeout == 30.0
    assert c.max_retransmissions == 15
    assert c.keepalive is True
    assert (c.keepalive_idle, c.keepalive_interval, c.keepalive_count) == (20.0, 5.0, 3)
    # A probe goes out before a 30 s NAT binding expires, even if the first one is lost.
    assert c.keepalive_idle + c.keepalive_interval < 30.0
