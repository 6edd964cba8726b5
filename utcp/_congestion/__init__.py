"""Congestion controllers, chosen by name (``Config.congestion_control``).

- ``cubic`` (the default): RFC 9438 CUBIC with RFC 9406 HyStart++.
- ``newreno`` / ``reno``: RFC 5681 / RFC 6582.
- ``ledbat``: RFC 6817 LEDBAT, a scavenger driven by RTT.

All of them share ``base.CongestionController``'s interface and RFC 7661 congestion window
validation (``cwv.py``).
"""

from __future__ import annotations

from collections.abc import Callable

from .base import AckSample, CongestionController, CongestionSnapshot
from .cubic import Cubic
from .hystart import NON_PACED_L
from .ledbat import Ledbat
from .newreno import NewReno

DEFAULT = "cubic"


def _cubic(*, mss: int, initial_window: int, paced: bool) -> CongestionController:
    # RFC 9406 4.3: L = infinity for a paced sender, 8 segments otherwise.
    limit = None if paced else NON_PACED_L
    return Cubic(mss=mss, initial_window=initial_window, hystart_limit=limit)


def _ledbat(*, mss: int, initial_window: int, paced: bool) -> CongestionController:
    return Ledbat(mss=mss, initial_window=initial_window)


def _newreno(*, mss: int, initial_window: int, paced: bool) -> CongestionController:
    return NewReno(mss=mss, initial_window=initial_window)


_REGISTRY: dict[str, Callable[..., CongestionController]] = {
    "cubic": _cubic,
    "ledbat": _ledbat,
    "newreno": _newreno,
    "reno": _newreno,
}


def available() -> list[str]:
    return sorted(_REGISTRY)


def create(
    name: str, *, mss: int, initial_window: int, paced: bool = False
) -> CongestionController:
    """A new controller; ``paced`` says whether the sender paces (it sets HyStart++'s L)."""
    try:
        factory = _REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown congestion control {name!r}; available: {', '.join(available())}"
        ) from None
    return factory(mss=mss, initial_window=initial_window, paced=paced)


__all__ = [
    "DEFAULT",
    "AckSample",
    "CongestionController",
    "CongestionSnapshot",
    "Cubic",
    "Ledbat",
    "NewReno",
    "available",
    "create",
]
