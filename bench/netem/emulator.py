"""One direction of a link with netem's semantics, driven by the caller's clock.

:class:`NetemQueue` is a function of (packets, ``now``): :meth:`~NetemQueue.enqueue` decides a
packet's fate the way Linux's ``sch_netem`` does on enqueue, :meth:`~NetemQueue.next_release`
says when the next packet is due, and :meth:`~NetemQueue.release` hands back the packets due
by ``now`` in netem's dequeue order. No clock is read and every random draw comes from one
seeded generator, so a run replays exactly.

The decisions on enqueue, in netem's order:

1. duplicate: with the duplicate probability the packet counts twice;
2. loss (random, 4-state or Gilbert-Elliott): one copy fewer; nothing left means dropped;
3. corrupt: one random bit of the packet flipped (anywhere in it, as netem flips a bit in the
   packet's linear data, so an IP header hit is dropped by the receiving kernel);
4. limit: a queue already holding ``limit`` packets drops the packet (tail drop);
5. the duplicate, if any, goes through the whole queue again, without duplication;
6. reorder: unless a reorder gap is running or the reorder draw fails, the packet is sent
   now, ahead of the delayed ones; otherwise it gets ``delay`` plus its jitter (drawn from
   the distribution) and, with ``rate``, waits for the previous packet's release plus its
   own serialisation time ``(len + framing + overhead) * 8 / rate`` (cells rounded up when a
   cell size is set; ``framing`` makes up for headers netem would count but the caller's
   packets lack). Packets leave in release-time order, so jitter alone reorders, as in netem.

Correlations are netem's: the next uniform draw is ``(1 - rho) * fresh + rho * previous``.
Delay distributions are netem's tables as functions of that uniform draw, in units of the
jitter and clipped at +-4 jitters like the 16-bit tables (``NETEM_DIST_SCALE`` 8192):
``normal`` is the standard normal quantile, ``pareto`` is ``(u ** (-1/3) - 1.5) * 4/3``
(iproute2's pareto.c, alpha 3, shifted to mean 0), ``paretonormal`` is 1/4 normal plus 3/4
pareto (iproute2 mixes its tables in that ratio; here with independent draws). Without a
distribution the jitter is uniform in ``[delay - jitter, delay + jitter)``, the kernel's
draw when tc passes no table.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Generic, TypeVar

from .spec import Delay, GilbertElliottLoss, NetemSpec, RandomLoss, StateLoss

T = TypeVar("T")

# Linux's netem tables hold int16 values scaled by NETEM_DIST_SCALE (8192): +-4 jitters at most.
_TABLE_CLIP = 32767 / 8192
_PARETO_ALPHA = 3.0
_STANDARD_NORMAL = NormalDist()


class CorrelatedUniform:
    """netem's ``get_crandom()``: uniform draws in [0, 1) where each one leans on the last
    by ``rho``. With ``rho == 0`` the draws are independent."""

    __slots__ = ("_last", "_rho", "_rng")

    def __init__(self, rng: random.Random, rho: float) -> None:
        self._rng = rng
        self._rho = rho
        self._last = rng.random()

    def __call__(self) -> float:
        value = self._rng.random()
        if self._rho:
            value = (1.0 - self._rho) * value + self._rho * self._last
            self._last = value
        return value


def distribution_value(name: str | None, u: float, rng: random.Random) -> float:
    """The jitter multiplier netem's table ``name`` gives for the uniform draw ``u``."""
    u = min(max(u, 1e-12), 1.0 - 1e-12)
    if name is None or name == "uniform":
        return 2.0 * u - 1.0
    if name == "normal":
        value = _STANDARD_NORMAL.inv_cdf(u)
    elif name == "pareto":
        value = _pareto(u)
    else:  # paretonormal
        value = 0.25 * _STANDARD_NORMAL.inv_cdf(u) + 0.75 * _pareto(rng.random())
    return min(max(value, -_TABLE_CLIP), _TABLE_CLIP)


def _pareto(u: float) -> float:
    return (float(max(u, 1e-12) ** (-1.0 / _PARETO_ALPHA)) - 1.5) * (4.0 / 3.0)


class _LossModel:
    """Random loss, the 4-state Markov model or Gilbert-Elliott, as netem's loss_event()."""

    __slots__ = ("_corr", "_model", "_rng", "state")

    def __init__(self, model: RandomLoss | StateLoss | GilbertElliottLoss, rng: random.Random):
        self._model = model
        self._rng = rng
        rho = model.correlation if isinstance(model, RandomLoss) else 0.0
        self._corr = CorrelatedUniform(rng, rho)
        self.state = 1  # 4-state: 1 TX gap, 2 TX burst, 3 LOST burst, 4 LOST gap; GE: 1 good 2 bad

    def lost(self) -> bool:
        model = self._model
        if isinstance(model, RandomLoss):
            return model.probability > 0 and self._corr() < model.probability
        if isinstance(model, GilbertElliottLoss):
            return self._gilbert_elliott(model)
        return self._four_state(model)

    def _gilbert_elliott(self, m: GilbertElliottLoss) -> bool:
        # netem's loss_gilb_ell(): a transition draw, then a loss draw with the loss
        # probability of the state the packet arrived in.
        rng = self._rng
        if self.state == 1:
            if rng.random() < m.p:
                self.state = 2
            return rng.random() < m.loss_in_good
        if rng.random() < m.r:
            self.state = 1
        return rng.random() < m.loss_in_bad

    def _four_state(self, m: StateLoss) -> bool:
        # netem's loss_4state(): one draw per packet; the state reached says whether the
        # packet is lost (3, 4) or transmitted (1, 2).
        rnd = self._rng.random()
        state = self.state
        if state == 1:
            if rnd < m.p14:
                self.state = 4
                return True
            if rnd < m.p14 + m.p13:
                self.state = 3
                return True
            return False
        if state == 2:
            if rnd < m.p23:
                self.state = 3
                return True
            return False
        if state == 3:
            if rnd < m.p32:
                self.state = 2
                return False
            if rnd < m.p32 + m.p31:
                self.state = 1
                return False
            return True
        self.state = 1
        return False


@dataclass
class QueueStats:
    """What one direction did, counted per cause."""

    received: int = 0  # packets offered to the queue
    sent: int = 0  # packets released (duplicates included)
    bytes_sent: int = 0
    dropped_loss: int = 0
    dropped_limit: int = 0  # tail drops: the queue held ``limit`` packets
    duplicated: int = 0
    reordered: int = 0  # sent ahead of the delayed packets (the reorder draw)
    corrupted: int = 0
    max_queue: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class NetemQueue(Generic[T]):
    """One direction's netem queue. ``enqueue(data, now, tag)`` takes a packet and an opaque
    tag (where it goes), ``release(now)`` returns ``(due, data, tag)`` for every packet due,
    ``due`` being the release time netem scheduled (never later than ``now``)."""

    def __init__(self, spec: NetemSpec, *, seed: int, framing: int = 0) -> None:
        self.spec = spec
        # Bytes the caller's packets lack against what netem measures on a veth (rate only):
        # netem counts the Ethernet header, a TUN packet starts at the IP header.
        self.framing = framing
        self.stats = QueueStats()
        self._rng = random.Random(spec.seed if spec.seed is not None else seed)
        rng = self._rng
        self._loss = _LossModel(spec.loss, rng) if spec.loss is not None else None
        delay = spec.delay or Delay(0.0)
        self._delay = delay
        self._delay_rnd = CorrelatedUniform(rng, delay.correlation)
        self._dup_rnd = CorrelatedUniform(rng, spec.duplicate.correlation if spec.duplicate else 0)
        self._corrupt_rnd = CorrelatedUniform(rng, spec.corrupt.correlation if spec.corrupt else 0)
        self._reorder_rnd = CorrelatedUniform(rng, spec.reorder.correlation if spec.reorder else 0)
        self._counter = 0  # netem's q->counter: packets delayed since the last reorder
        self._order = 0  # FIFO among equal release times
        self._heap: list[tuple[float, int, bytes, T]] = []
        self._last_due: float | None = None  # latest release time queued (rate's reference)

    def __len__(self) -> int:
        return len(self._heap)

    def next_release(self) -> float | None:
        """When the next packet is due (possibly already past), or None when empty."""
        return self._heap[0][0] if self._heap else None

    def release(self, now: float) -> list[tuple[float, bytes, T]]:
        """Remove and return the packets due by ``now``, earliest first."""
        out: list[tuple[float, bytes, T]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _order, data, tag = heapq.heappop(heap)
            out.append((due, data, tag))
            self.stats.sent += 1
            self.stats.bytes_sent += len(data)
        if not heap:
            self._last_due = None
        return out

    def enqueue(self, data: bytes, now: float, tag: T) -> None:
        """Take one packet arriving at ``now`` (see the module docstring for its fate)."""
        self.stats.received += 1
        self._enqueue(data, now, tag, duplicate_allowed=True)

    def _enqueue(self, data: bytes, now: float, tag: T, *, duplicate_allowed: bool) -> None:
        spec, stats = self.spec, self.stats
        count = 1
        if duplicate_allowed and spec.duplicate and self._dup_rnd() < spec.duplicate.probability:
            count += 1
        if self._loss is not None and self._loss.lost():
            count -= 1
        if count == 0:
            stats.dropped_loss += 1
            return
        copy = data if count > 1 else None
        if spec.corrupt and self._corrupt_rnd() < spec.corrupt.probability and data:
            data = self._flip_a_bit(data)
            stats.corrupted += 1
        if len(self._heap) >= spec.limit:
            stats.dropped_limit += 1 + (copy is not None)
            return
        if copy is not None:
            stats.duplicated += 1
            self._enqueue(copy, now, tag, duplicate_allowed=False)
        self._schedule(data, now, tag)
        stats.max_queue = max(stats.max_queue, len(self._heap))

    def _flip_a_bit(self, data: bytes) -> bytes:
        corrupted = bytearray(data)
        corrupted[self._rng.randrange(len(corrupted))] ^= 1 << self._rng.randrange(8)
        return bytes(corrupted)

    def _schedule(self, data: bytes, now: float, tag: T) -> None:
        reorder = self.spec.reorder
        if (
            reorder is None
            or self._counter < reorder.gap - 1
            or self._reorder_rnd() >= reorder.probability
        ):
            # A negative draw (jitter above the delay) is due at once, as in netem.
            due = now + max(0.0, self._draw_delay())
            rate = self.spec.rate
            if rate is not None:
                if self._last_due is not None:
                    # netem: the last queued packet is the reference point; the time it still
                    # waits is taken off this packet's delay, so it never leaves before it.
                    due = max(due, self._last_due)
                due += self._serialisation_time(len(data))
            self._counter += 1
            self._order += 1
            order = self._order
        else:
            # netem: a reordered packet goes to the head of the queue, sent at once.
            due = now
            self._counter = 0
            self._order += 1
            order = -self._order
            self.stats.reordered += 1
        if self._last_due is None or due > self._last_due:
            self._last_due = due
        heapq.heappush(self._heap, (due, order, data, tag))

    def _draw_delay(self) -> float:
        d = self._delay
        if not d.jitter:
            return d.time
        u = self._delay_rnd()
        return d.time + d.jitter * distribution_value(d.distribution, u, self._rng)

    def _serialisation_time(self, length: int) -> float:
        rate = self.spec.rate
        assert rate is not None
        length += self.framing + rate.packet_overhead
        if rate.cell_size:
            cells = math.ceil(length / rate.cell_size)
            length = cells * (rate.cell_size + rate.cell_overhead)
        return max(length, 0) * 8.0 / rate.bits_per_second
