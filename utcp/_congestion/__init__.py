"""Congestion controllers, chosen by name (``Config.congestion_control``)."""

from __future__ import annotations

from collections.abc import Callable

from .base import CongestionController
from .newreno import NewReno

_REGISTRY: dict[str, Callable[..., CongestionController]] = {"newreno": NewReno, "reno": NewReno}


def available() -> list[str]:
    return sorted(_REGISTRY)


def create(name: str, *, mss: int, initial_window: int) -> CongestionController:
    try:
        factory = _REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown congestion control {name!r}; available: {', '.join(available())}"
        ) from None
    return factory(mss=mss, initial_window=initial_window)


__all__ = ["CongestionController", "available", "create"]
