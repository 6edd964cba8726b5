"""The scenarios ``python -m bench`` knows by name, and the groups it runs by default.

A scenario is a netem spec (netem's own syntax, applied to each direction) or ``loopback``
(127.0.0.1, no emulated link). ``--scenarios`` takes scenario names, group names and raw
spec strings (anything else that parses as a netem spec, e.g. ``"delay 40ms loss 3%"``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .netem.spec import GilbertElliottLoss, RandomLoss, StateLoss, parse_spec

LOOPBACK = "loopback"

RTTS_MS = (20, 50, 100, 200, 300)
LOSSES = ("0", "0.1", "1", "2", "5")


def _delay(rtt_ms: int) -> str:
    half = rtt_ms / 2
    return f"delay {half:g}ms"


def _sweeps() -> tuple[dict[str, str], dict[str, list[str]]]:
    named: dict[str, str] = {}
    groups: dict[str, list[str]] = {"rtt-loss": [], "rtt-burst": []}
    for rtt in RTTS_MS:
        for loss in LOSSES:
            name = f"rtt{rtt}-loss{loss}"
            named[name] = _delay(rtt) + ("" if loss == "0" else f" loss {loss}%")
            groups["rtt-loss"].append(name)
        # Gilbert-Elliott bursts: 1% of packets start a burst, bursts last 6 packets on
        # average (r = 16.7%): about 5.7% of packets lost, in runs.
        name = f"rtt{rtt}-burst"
        named[name] = _delay(rtt) + " loss gemodel 1% 16.7%"
        groups["rtt-burst"].append(name)
    return named, groups


_SWEEP_SCENARIOS, _SWEEP_GROUPS = _sweeps()

SCENARIOS: dict[str, str] = {
    "clean": "",
    "delay25": "delay 25ms",
    "delay25-loss1": "delay 25ms loss 1%",
    "jitter-loss2-reorder5": "delay 50ms 10ms loss 2% reorder 5%",
    "rate20-limit100": "rate 20mbit delay 10ms limit 100",
    "burst-gemodel": "delay 25ms loss gemodel 1% 16.7%",
    "rate50-limit1000": "rate 50mbit delay 20ms limit 1000",
    "satellite": "delay 150ms 15ms rate 50mbit",
    "quick-lossy": "delay 10ms loss 1%",
    **_SWEEP_SCENARIOS,
}

GROUPS: dict[str, list[str]] = {
    "full": [
        LOOPBACK,
        "clean",
        "delay25",
        "delay25-loss1",
        "jitter-loss2-reorder5",
        "rate20-limit100",
        "burst-gemodel",
    ],
    "quick": [LOOPBACK, "quick-lossy"],
    "ratecap": ["rate20-limit100", "rate50-limit1000"],
    "satellite": ["satellite"],
    **_SWEEP_GROUPS,
}


@dataclass(frozen=True)
class Scenario:
    name: str
    spec: str | None  # None: loopback, no link

    @property
    def base_rtt(self) -> float:
        """The round trip the spec's delay adds (both directions), in seconds."""
        if self.spec is None:
            return 0.0
        delay = parse_spec(self.spec).delay
        return 2 * delay.time if delay else 0.0

    @property
    def mean_loss(self) -> float:
        """The long-run fraction of packets the spec drops, per direction."""
        if self.spec is None:
            return 0.0
        loss = parse_spec(self.spec).loss
        if isinstance(loss, RandomLoss):
            return loss.probability
        if isinstance(loss, GilbertElliottLoss):
            if loss.p + loss.r == 0:
                return loss.loss_in_good
            bad = loss.p / (loss.p + loss.r)
            return bad * loss.loss_in_bad + (1 - bad) * loss.loss_in_good
        if isinstance(loss, StateLoss):
            return loss.p13  # a rough figure: the 4-state model is not swept by name
        return 0.0

    @property
    def has_rate(self) -> bool:
        return self.spec is not None and parse_spec(self.spec).rate is not None

    @property
    def bursty(self) -> bool:
        return self.spec is not None and isinstance(parse_spec(self.spec).loss, GilbertElliottLoss)


def resolve(items: list[str]) -> list[Scenario]:
    """Scenario names, group names and raw specs, in order, without repeats."""
    out: list[Scenario] = []
    seen: set[str] = set()

    def add(name: str, spec: str | None) -> None:
        if name not in seen:
            seen.add(name)
            out.append(Scenario(name, spec))

    for item in items:
        if item == LOOPBACK:
            add(LOOPBACK, None)
        elif item in GROUPS:
            for name in GROUPS[item]:
                add(name, None if name == LOOPBACK else SCENARIOS[name])
        elif item in SCENARIOS:
            add(item, SCENARIOS[item])
        else:
            try:
                parse_spec(item)
            except ValueError as exc:
                known = ", ".join([*GROUPS, *SCENARIOS])
                raise ValueError(
                    f"{item!r}: not a scenario or group ({known}) nor a spec: {exc}"
                ) from exc
            add(item, item)
    return out
