"""netem specs in netem's own syntax (tc-netem(8)), parsed into values the emulator applies.

Grammar (a subset of ``tc qdisc ... netem OPTIONS``; options in any order, each at most once)::

    limit PACKETS                                   (default 1000, as tc)
    delay TIME [JITTER [CORRELATION]] [distribution {uniform|normal|pareto|paretonormal}]
    loss [random] PERCENT [CORRELATION]
    loss state P13 [P31 [P32 [P23 [P14]]]]
    loss gemodel P [R [1-H [1-K]]]
    duplicate PERCENT [CORRELATION]
    reorder PERCENT [CORRELATION] [gap DISTANCE]
    corrupt PERCENT [CORRELATION]
    rate RATE [PACKETOVERHEAD [CELLSIZE [CELLOVERHEAD]]]
    seed VALUE

Units follow tc(8): a TIME is ``s``/``sec``/``secs``, ``ms``/``msec``/``msecs``,
``us``/``usec``/``usecs`` (a bare number is microseconds); a PERCENT may omit the ``%`` (still
a percentage); a RATE is ``bit``/``kbit``/``mbit``/``gbit``/``tbit`` (SI), ``kibit``...
(binary), ``bps``/``kbps``/``mbps``/``gbps``/``tbps`` (bytes per second), a bare number is
bits per second. The defaults of the loss models are tc's: ``gemodel P`` means R = 1 - P,
1-H = 100 %, 1-K = 0; ``state P13`` means P31 = 1 - P13, P32 = 0, P23 = 100 %, P14 = 0.
tc's consistency checks apply too: reorder needs a delay, ``gap`` needs reorder, a
distribution needs a delay and a jitter. ``ecn`` and ``slot`` are refused (not emulated).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_LIMIT = 1000  # tc-netem(8): the qdisc's default queue limit in packets
DISTRIBUTIONS = ("uniform", "normal", "pareto", "paretonormal")

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_TIME_RE = re.compile(_NUMBER + r"(s|sec|secs|ms|msec|msecs|us|usec|usecs|ns|nsec|nsecs)?")
_TIME_UNITS = {
    None: 1e-6,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "ms": 1e-3,
    "msec": 1e-3,
    "msecs": 1e-3,
    "us": 1e-6,
    "usec": 1e-6,
    "usecs": 1e-6,
    "ns": 1e-9,
    "nsec": 1e-9,
    "nsecs": 1e-9,
}
_PERCENT_RE = re.compile(_NUMBER + r"(%?)")
_RATE_RE = re.compile(_NUMBER + r"([a-z]*)", re.IGNORECASE)
_RATE_UNITS = {  # bits per second per unit, tc(8) "RATES"
    "": 1.0,
    "bit": 1.0,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "tbit": 1e12,
    "kibit": 1024.0,
    "mibit": 1024.0**2,
    "gibit": 1024.0**3,
    "tibit": 1024.0**4,
    "bps": 8.0,
    "kbps": 8e3,
    "mbps": 8e6,
    "gbps": 8e9,
    "tbps": 8e12,
    "kibps": 8 * 1024.0,
    "mibps": 8 * 1024.0**2,
    "gibps": 8 * 1024.0**3,
    "tibps": 8 * 1024.0**4,
}
_UNSUPPORTED = {
    "ecn": "ecn marking is not emulated",
    "slot": "slotting is not emulated",
    "rng": "choosing the random generator is not emulated (use seed)",
}


@dataclass(frozen=True)
class Delay:
    """``delay TIME [JITTER [CORRELATION]] [distribution D]``; times in seconds."""

    time: float
    jitter: float = 0.0
    correlation: float = 0.0  # 0..1
    distribution: str | None = None  # None: netem's built-in uniform draw


@dataclass(frozen=True)
class RandomLoss:
    """``loss random PERCENT [CORRELATION]``; probabilities in 0..1."""

    probability: float
    correlation: float = 0.0


@dataclass(frozen=True)
class StateLoss:
    """``loss state``: the 4-state Markov model (GI), transition probabilities in 0..1."""

    p13: float
    p31: float
    p32: float = 0.0
    p23: float = 1.0
    p14: float = 0.0


@dataclass(frozen=True)
class GilbertElliottLoss:
    """``loss gemodel P [R [1-H [1-K]]]``: P good->bad, R bad->good, loss probability 1-H in
    the bad state and 1-K in the good state (all 0..1)."""

    p: float
    r: float
    loss_in_bad: float = 1.0  # 1-h
    loss_in_good: float = 0.0  # 1-k


Loss = RandomLoss | StateLoss | GilbertElliottLoss


@dataclass(frozen=True)
class Chance:
    """``duplicate``/``corrupt PERCENT [CORRELATION]``."""

    probability: float
    correlation: float = 0.0


@dataclass(frozen=True)
class Reorder:
    """``reorder PERCENT [CORRELATION] [gap DISTANCE]`` (tc makes the gap 1 when not given)."""

    probability: float
    correlation: float = 0.0
    gap: int = 1


@dataclass(frozen=True)
class Rate:
    """``rate RATE [PACKETOVERHEAD [CELLSIZE [CELLOVERHEAD]]]``, the rate in bits per second."""

    bits_per_second: float
    packet_overhead: int = 0
    cell_size: int = 0
    cell_overhead: int = 0


@dataclass(frozen=True)
class NetemSpec:
    """One direction's impairments. ``NetemSpec()`` is a clean link (no impairment)."""

    limit: int = DEFAULT_LIMIT
    delay: Delay | None = None
    loss: Loss | None = None
    duplicate: Chance | None = None
    reorder: Reorder | None = None
    corrupt: Chance | None = None
    rate: Rate | None = None
    seed: int | None = None

    def to_tc_args(self) -> list[str]:
        """The spec as ``tc qdisc add ... netem`` arguments (canonical units)."""
        args = ["limit", str(self.limit)]
        if self.delay is not None:
            d = self.delay
            args += ["delay", _us(d.time)]
            if d.jitter or d.correlation:
                args.append(_us(d.jitter))
            if d.correlation:
                args.append(_pct(d.correlation))
            if d.distribution is not None:
                args += ["distribution", d.distribution]
        loss = self.loss
        if isinstance(loss, RandomLoss):
            args += ["loss", "random", _pct(loss.probability)]
            if loss.correlation:
                args.append(_pct(loss.correlation))
        elif isinstance(loss, StateLoss):
            args += ["loss", "state"]
            args += [_pct(v) for v in (loss.p13, loss.p31, loss.p32, loss.p23, loss.p14)]
        elif isinstance(loss, GilbertElliottLoss):
            args += ["loss", "gemodel"]
            args += [_pct(v) for v in (loss.p, loss.r, loss.loss_in_bad, loss.loss_in_good)]
        for name, chance in (("duplicate", self.duplicate), ("corrupt", self.corrupt)):
            if chance is not None:
                args += [name, _pct(chance.probability)]
                if chance.correlation:
                    args.append(_pct(chance.correlation))
        if self.reorder is not None:
            r = self.reorder
            args += ["reorder", _pct(r.probability), _pct(r.correlation), "gap", str(r.gap)]
        if self.rate is not None:
            rate = self.rate
            args += ["rate", f"{rate.bits_per_second:.0f}bit"]
            if rate.packet_overhead or rate.cell_size or rate.cell_overhead:
                args += [str(rate.packet_overhead), str(rate.cell_size), str(rate.cell_overhead)]
        if self.seed is not None:
            args += ["seed", str(self.seed)]
        return args

    def __str__(self) -> str:
        return " ".join(self.to_tc_args())


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f}us"


def _pct(probability: float) -> str:
    return f"{probability * 100:.6g}%"


def parse_time(token: str) -> float:
    """A tc TIME in seconds (``25ms``, ``1.5s``, ``300us``; a bare number is microseconds)."""
    match = _TIME_RE.fullmatch(token)
    if match is None:
        raise ValueError(f"not a time: {token!r} (expected e.g. 25ms, 1s, 500us)")
    return float(match.group(1)) * _TIME_UNITS[match.group(2)]


def parse_percent(token: str) -> float:
    """A tc PERCENT as a probability in 0..1 (``1%``, ``0.5%``; ``1`` also means 1 %)."""
    match = _PERCENT_RE.fullmatch(token)
    if match is None:
        raise ValueError(f"not a percentage: {token!r} (expected e.g. 1%, 0.1%)")
    value = float(match.group(1)) / 100.0
    if value > 1.0:
        raise ValueError(f"percentage above 100%: {token!r}")
    return value


def parse_rate(token: str) -> float:
    """A tc RATE in bits per second (``20mbit``, ``1gbit``, ``125kbps``; bare = bit/s)."""
    match = _RATE_RE.fullmatch(token)
    if match is None or match.group(2).lower() not in _RATE_UNITS:
        raise ValueError(f"not a rate: {token!r} (expected e.g. 20mbit, 1gbit, 125kbps)")
    bits = float(match.group(1)) * _RATE_UNITS[match.group(2).lower()]
    if bits <= 0:
        raise ValueError(f"rate must be positive: {token!r}")
    return bits


def _is_number(token: str | None) -> bool:
    # tc's NEXT_IS_NUMBER(): an optional positional argument starts with a digit.
    return token is not None and token[:1].isdigit()


def _is_signed_number(token: str | None) -> bool:
    return token is not None and (token[:1].isdigit() or token[:1] == "-")


def _parse_int(token: str, what: str, *, minimum: int) -> int:
    try:
        value = int(token, 10)
    except ValueError:
        raise ValueError(f"{what} must be an integer, got {token!r}") from None
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return value


class _Tokens:
    def __init__(self, text: str) -> None:
        self.items = text.split()
        self.pos = 0

    def peek(self) -> str | None:
        return self.items[self.pos] if self.pos < len(self.items) else None

    def take(self, what: str) -> str:
        token = self.peek()
        if token is None:
            raise ValueError(f"{what} expected after {' '.join(self.items[: self.pos])!r}")
        self.pos += 1
        return token

    def take_if_number(self) -> str | None:
        token = self.peek()
        if _is_number(token):
            self.pos += 1
            return token
        return None


def parse_spec(text: str | None) -> NetemSpec:
    """Parse a netem spec (module docstring); ``None`` or ``""`` is a clean link.

    Raises ValueError naming the offending token on anything tc would refuse, and on the
    options this emulator does not implement.
    """
    tokens = _Tokens(text or "")
    seen: set[str] = set()
    limit = DEFAULT_LIMIT
    delay_time: float | None = None
    jitter = correlation = 0.0
    distribution: str | None = None
    loss: Loss | None = None
    duplicate = corrupt = None
    reorder_pc: tuple[float, float] | None = None
    gap: int | None = None
    rate: Rate | None = None
    seed: int | None = None
    while (word := tokens.peek()) is not None:
        tokens.pos += 1
        key = {"latency": "delay", "drop": "loss"}.get(word, word)
        if key in _UNSUPPORTED:
            raise ValueError(f"netem option {word!r} is not supported: {_UNSUPPORTED[key]}")
        if key in seen:
            raise ValueError(f"netem option {word!r} given twice")
        seen.add(key)
        if key == "limit":
            limit = _parse_int(tokens.take("limit PACKETS"), "limit", minimum=0)
        elif key == "delay":
            delay_time = parse_time(tokens.take("delay TIME"))
            if (token := tokens.take_if_number()) is not None:
                jitter = parse_time(token)
                if (token := tokens.take_if_number()) is not None:
                    correlation = parse_percent(token)
        elif key == "distribution":
            distribution = tokens.take("distribution NAME")
            if distribution not in DISTRIBUTIONS:
                raise ValueError(
                    f"unknown distribution {distribution!r} (one of {', '.join(DISTRIBUTIONS)})"
                )
        elif key == "loss":
            loss = _parse_loss(tokens)
        elif key in ("duplicate", "corrupt"):
            probability = parse_percent(tokens.take(f"{key} PERCENT"))
            token = tokens.take_if_number()
            chance = Chance(probability, parse_percent(token) if token is not None else 0.0)
            if key == "duplicate":
                duplicate = chance
            else:
                corrupt = chance
        elif key == "reorder":
            probability = parse_percent(tokens.take("reorder PERCENT"))
            token = tokens.take_if_number()
            reorder_pc = (probability, parse_percent(token) if token is not None else 0.0)
        elif key == "gap":
            gap = _parse_int(tokens.take("gap DISTANCE"), "gap", minimum=1)
        elif key == "rate":
            rate = _parse_rate_option(tokens)
        elif key == "seed":
            seed = _parse_int(tokens.take("seed VALUE"), "seed", minimum=0)
        else:
            raise ValueError(f"unknown netem option {word!r}")
    delay = None
    if delay_time is not None:
        delay = Delay(delay_time, jitter, correlation, distribution)
    if distribution is not None and (delay is None or delay.time == 0 or delay.jitter == 0):
        raise ValueError("distribution specified but no latency and jitter values")
    reorder = None
    if reorder_pc is not None and reorder_pc[0] > 0:
        if delay is None or delay.time == 0:
            raise ValueError("reordering not possible without specifying some delay")
        reorder = Reorder(reorder_pc[0], reorder_pc[1], gap or 1)
    elif gap is not None:
        raise ValueError("gap specified without reorder probability")
    return NetemSpec(limit, delay, loss, duplicate, reorder, corrupt, rate, seed)


def _parse_loss(tokens: _Tokens) -> Loss:
    model = tokens.take("loss PERCENT or model")
    if model[:1].isdigit() or model == "random":
        token = model if model != "random" else tokens.take("loss random PERCENT")
        probability = parse_percent(token)
        corr = tokens.take_if_number()
        return RandomLoss(probability, parse_percent(corr) if corr is not None else 0.0)
    if model == "state":
        p13 = parse_percent(tokens.take("loss state P13"))
        values = [p13, 1.0 - p13, 0.0, 1.0, 0.0]  # tc's defaults
        for i in range(1, 5):
            if (given := tokens.take_if_number()) is None:
                break
            values[i] = parse_percent(given)
        return StateLoss(*values)
    if model == "gemodel":
        p = parse_percent(tokens.take("loss gemodel P"))
        values = [p, 1.0 - p, 1.0, 0.0]  # tc's defaults: r = 1 - p, 1-h = 100%, 1-k = 0
        for i in range(1, 4):
            if (given := tokens.take_if_number()) is None:
                break
            values[i] = parse_percent(given)
        return GilbertElliottLoss(*values)
    raise ValueError(f"unknown loss model {model!r} (random PERCENT, state ..., gemodel ...)")


def _parse_rate_option(tokens: _Tokens) -> Rate:
    token = tokens.take("rate RATE")
    if token.endswith("%"):
        raise ValueError(f"a rate relative to the device ({token!r}) is not supported")
    bits = parse_rate(token)
    extras = [0, 0, 0]
    checks = (_is_signed_number, _is_number, _is_signed_number)
    names = ("packet overhead", "cell size", "cell overhead")
    for i, (check, name) in enumerate(zip(checks, names, strict=True)):
        if not check(tokens.peek()):
            break
        extras[i] = _parse_int(tokens.take(name), name, minimum=-(2**31) if i != 1 else 0)
    return Rate(bits, *extras)
