"""A deterministic, seeded simulated datagram network on a virtual clock.

`SimNetwork` connects two or more sans-IO nodes (anything that satisfies `Node`), each owning
one UDP address, through configurable one-way links. Nothing here reads a real clock or sleeps:
time is a float that only `step`, `run` and `run_for` move forward.

Model
-----
Every ordered pair of IPs ``(src_ip, dst_ip)`` is one *link direction* with its own
`LinkConfig`, `LinkStats`, Gilbert-Elliott state and bottleneck queue; `default_link` applies to
pairs that `set_link` never configured. A datagram handed to the network by a node passes, in
this order:

1. **filters** (`add_filter`): a filter that returns True drops it (fate ``"filtered"``);
   filtered datagrams never reach the link and are not counted in its `LinkStats`;
2. **MTU**: ``len(data) + 28`` (IPv4 + UDP headers; 48 when the destination IP contains a
   ``":"``, i.e. IPv6) greater than ``mtu`` is dropped (``"mtu_drop"``);
3. **loss**: an independent draw against ``loss``, then one step of the Gilbert-Elliott chain
   (a state transition draw, then a loss draw against the new state's loss probability);
   either one loses it (``"lost"``);
4. **bottleneck** (only when ``rate`` is set): departure = max(now, busy_until) +
   ``(len(data) + header) * 8 / rate``. Bytes queued are the header-inclusive sizes of the
   datagrams whose departure is still in the future (those waiting plus the one on the wire);
   if adding this one would exceed ``queue_bytes`` it is dropped (``"queue_drop"``);
5. **delay**: arrival = departure + ``delay`` + uniform(0, ``jitter``), then raised to the
   previous arrival on this direction so that jitter alone never reorders (FIFO); then, with
   probability ``reorder``, the datagram is held back by an extra ``reorder_delay`` *after*
   the FIFO clamp, which is the only way later datagrams overtake it;
6. **duplication**: with probability ``duplicate`` a second copy is scheduled with the same
   departure and its own delay draw (step 5);
7. **corruption**: each copy independently, with probability ``corrupt``, is damaged in a copy
   (the sender's bytes are never mutated). ``corrupt_model="burst"`` (the default) inverts a
   run of 1 to 15 adjacent bits: the RFC 1071 checksum detects every burst shorter than 16
   bits, so every such datagram must be dropped by the receiver. ``"scatter"`` flips 1 to 3
   bits anywhere, which models errors the 16-bit checksum can miss (two flips in the same bit
   column of different words, in opposite directions, cancel): it exists to measure that
   limit of TCP's checksum, not to be survived.

Random draws are made only for features that are enabled, in exactly the order above, from the
single `random.Random(seed)` the network owns, so the same seed and the same node behaviour
replay bit-identically.

Event loop
----------
After `attach` and after every step the network *polls*: it calls every node's
``datagrams_to_send(now)`` in attachment order and pushes the results through their links,
repeating until a full round yields nothing (bounded; a node that never stops producing
raises `SimulationTimeout`). `step`, `run` and `run_for` also poll once when called, so output
created by application calls made between runs is picked up.

Pending deliveries sit in a heap keyed by (arrival time, insertion counter). The next instant
is the earliest of the first delivery and every node's ``next_timer()``, but never earlier than
the current time. At that instant the network:

1. delivers every datagram due at or before it, grouped per destination into one
   ``receive_datagrams(batch, now)`` call in arrival order (destinations in order of their first
   datagram); a datagram whose destination is not attached (any more) is dropped
   (``"no_route"``);
2. calls ``handle_timer(now)`` for every node whose ``next_timer()`` is <= now, so a timer is
   never handled before its deadline;
3. polls.

A node whose ``next_timer()`` is already <= now is handled at the current instant, without
time moving. A node that keeps re-arming a timer in the past therefore never lets time advance;
the ``max_steps`` bound of `run` (and of `run_for`) stops it with `SimulationTimeout`.

Trace and pcap
--------------
With ``trace=True`` every datagram gets a ``"sent"`` `TraceRecord` (time it was handed to the
network, original bytes) followed by one record per outcome: a drop fate at the send time, or
one ``"delivered"`` record per delivered copy with the delivery time and the (possibly
corrupted) bytes. A `PcapSink`, if given, is written once per delivered copy, at delivery time
with the delivered bytes: the capture shows what the receiving node actually saw, as if it were
taken on the receiver's interface. Dropped datagrams do not appear in it.

`inject` puts raw bytes from any (possibly fake) source straight into the delivery heap,
bypassing filters and link impairments, and it is not counted in any `LinkStats`.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .._wire import Address

__all__ = [
    "Address",
    "GilbertElliott",
    "LinkConfig",
    "LinkStats",
    "Node",
    "PcapSink",
    "SimNetwork",
    "SimulationTimeout",
    "TraceRecord",
]

"""(ip string, udp port)."""

Filter = Callable[[float, Address, Address, bytes], bool]

# IPv4 (20) + UDP (8) and IPv6 (40) + UDP (8) header bytes counted on the wire.
_IPV4_OVERHEAD = 28
_IPV6_OVERHEAD = 48
# Upper bound on polling rounds at one instant before a node is declared runaway.
_MAX_POLL_ROUNDS = 10_000
_DEFAULT_MAX_STEPS = 5_000_000


class Node(Protocol):
    """A sans-IO endpoint owning one UDP address on the simulated network."""

    def receive_datagrams(self, batch: Sequence[tuple[bytes, Address]], now: float) -> None:
        """Feed (data, source address) pairs that arrived at `now`."""

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Return (data, destination address) pairs to transmit at `now`."""

    def next_timer(self) -> float | None:
        """Return the absolute virtual deadline of the next timer, or None."""

    def handle_timer(self, now: float) -> None:
        """Handle timers due at or before `now`."""


class PcapSink(Protocol):
    """Where delivered datagrams are recorded (e.g. ``utcp._pcap.PcapWriter``)."""

    def write(self, timestamp: float, src: Address, dst: Address, segment_bytes: bytes) -> None:
        """Record one datagram delivered at `timestamp`."""


class SimulationTimeout(Exception):
    """The simulation did not reach its goal within its virtual-time or step budget."""


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


@dataclass(frozen=True)
class GilbertElliott:
    """Two-state (Good/Bad) Markov burst-loss model, stepped once per datagram.

    The chain starts Good. Each datagram first moves the chain (Good -> Bad with probability
    `p_good_to_bad`, Bad -> Good with `p_bad_to_good`), then is lost with the loss probability
    of the state it is now in. With ``loss_bad=1`` and ``loss_good=0`` losses come in bursts
    whose mean length is ``1 / p_bad_to_good``.
    """

    p_good_to_bad: float
    p_bad_to_good: float
    loss_good: float = 0.0
    loss_bad: float = 1.0

    def __post_init__(self) -> None:
        for name in ("p_good_to_bad", "p_bad_to_good", "loss_good", "loss_bad"):
            _check_probability(name, getattr(self, name))


@dataclass(frozen=True)
class LinkConfig:
    """Impairments of one direction of a path; see the module docstring for the pipeline."""

    delay: float = 0.0
    """One-way propagation delay, seconds."""
    jitter: float = 0.0
    """Extra uniform random delay in [0, jitter]; FIFO order is kept unless reorder > 0."""
    loss: float = 0.0
    """Independent random loss probability."""
    burst_loss: GilbertElliott | None = None
    duplicate: float = 0.0
    """Probability a datagram is delivered twice (the copy gets its own delay draw)."""
    reorder: float = 0.0
    """Probability a datagram is held back by an extra `reorder_delay`."""
    reorder_delay: float = 0.005
    corrupt: float = 0.0
    """Probability a datagram is damaged, as `corrupt_model` says."""
    corrupt_model: str = "burst"
    """"burst": 1..15 adjacent bits inverted (always caught by RFC 1071); "scatter": 1..3
    random bits flipped (may cancel out in the checksum)."""
    rate: float | None = None
    """Bottleneck rate in bits per second; None = infinite."""
    queue_bytes: int | None = None
    """Drop-tail limit on header-inclusive bytes waiting or being serialised; None = unbounded.
    Only meaningful with `rate`."""
    mtu: int = 1500
    """Datagrams with len(data) + 28 (48 for IPv6) > mtu are dropped."""

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder", "corrupt"):
            _check_probability(name, getattr(self, name))
        for name in ("delay", "jitter", "reorder_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be > 0 or None")
        if self.queue_bytes is not None and self.queue_bytes < 0:
            raise ValueError("queue_bytes must be >= 0 or None")
        if self.mtu <= 0:
            raise ValueError("mtu must be > 0")
        if self.corrupt_model not in ("burst", "scatter"):
            raise ValueError("corrupt_model must be 'burst' or 'scatter'")


@dataclass
class LinkStats:
    """Counters for one link direction.

    `sent` counts datagrams that passed the filters; `delivered` and `bytes_delivered` count
    delivered copies (duplicates included); `duplicated` counts extra copies made.
    """

    sent: int = 0
    delivered: int = 0
    lost: int = 0
    queue_drops: int = 0
    mtu_drops: int = 0
    duplicated: int = 0
    corrupted: int = 0
    reordered: int = 0
    bytes_delivered: int = 0


@dataclass(frozen=True)
class TraceRecord:
    """One event in a datagram's life.

    `fate` is one of "sent", "delivered", "lost", "queue_drop", "mtu_drop", "filtered",
    "no_route".
    """

    time: float
    src: Address
    dst: Address
    data: bytes
    fate: str


class _Link:
    """Mutable state of one link direction."""

    __slots__ = (
        "busy_until",
        "config",
        "ge_bad",
        "last_arrival",
        "overhead",
        "queue",
        "queued_bytes",
        "stats",
    )

    def __init__(self, config: LinkConfig, overhead: int) -> None:
        self.config = config
        self.overhead = overhead
        self.stats = LinkStats()
        self.ge_bad = False
        self.busy_until = float("-inf")
        self.last_arrival = float("-inf")
        # (departure time, header-inclusive size) of datagrams not yet fully serialised.
        self.queue: deque[tuple[float, int]] = deque()
        self.queued_bytes = 0


# (arrival time, insertion counter, src, dst, data, link or None for injected datagrams)
_Delivery = tuple[float, int, Address, Address, bytes, _Link | None]


class SimNetwork:
    """A seeded datagram network on a virtual clock; see the module docstring."""

    def __init__(
        self,
        *,
        seed: int,
        default_link: LinkConfig = LinkConfig(),
        start_time: float = 0.0,
        trace: bool = False,
        pcap: PcapSink | None = None,
    ) -> None:
        self._rng = random.Random(seed)
        self._default_link = default_link
        self._now = start_time
        self._tracing = trace
        self._pcap = pcap
        self._nodes: dict[Address, Node] = {}
        self._configs: dict[tuple[str, str], LinkConfig] = {}
        self._links: dict[tuple[str, str], _Link] = {}
        self._filters: list[Filter] = []
        self._heap: list[_Delivery] = []
        self._counter = 0
        self.trace_records: list[TraceRecord] = []

    @property
    def now(self) -> float:
        """Current virtual time."""
        return self._now

    # -- topology -----------------------------------------------------------------------------

    def attach(self, address: Address, node: Node) -> None:
        """Attach `node` at `address` and poll it (and everyone else) for output."""
        if address in self._nodes:
            raise ValueError(f"address {address!r} is already attached")
        self._nodes[address] = node
        self._poll()

    def detach(self, address: Address) -> None:
        """Remove the node at `address`; datagrams delivered to it later are "no_route"."""
        if address not in self._nodes:
            raise ValueError(f"address {address!r} is not attached")
        del self._nodes[address]

    def set_link(self, src_ip: str, dst_ip: str, config: LinkConfig) -> None:
        """Configure the direction src_ip -> dst_ip.

        Takes effect for datagrams sent from now on; counters, burst-loss state and the
        bottleneck queue of that direction carry over.
        """
        key = (src_ip, dst_ip)
        self._configs[key] = config
        link = self._links.get(key)
        if link is not None:
            link.config = config

    def link_stats(self, src_ip: str, dst_ip: str) -> LinkStats:
        """The live counters of the direction src_ip -> dst_ip."""
        return self._link(src_ip, dst_ip).stats

    def add_filter(self, fn: Filter) -> Callable[[], None]:
        """Add ``fn(now, src, dst, data)``; returning True drops the datagram ("filtered").

        Filters run in the order added, before any link impairment. Returns a function that
        removes the filter (calling it again does nothing).
        """
        # Copy-on-write, so a filter may add or remove filters while it runs.
        self._filters = [*self._filters, fn]

        def remove() -> None:
            if fn in self._filters:
                remaining = list(self._filters)
                remaining.remove(fn)
                self._filters = remaining

        return remove

    def inject(self, src: Address, dst: Address, data: bytes, delay: float = 0.0) -> None:
        """Deliver `data` to `dst` as if from `src`, `delay` seconds from now.

        Bypasses filters and link impairments; not counted in any `LinkStats`.
        """
        if delay < 0:
            raise ValueError("delay must be >= 0")
        if self._tracing:
            self.trace_records.append(TraceRecord(self._now, src, dst, data, "sent"))
        self._counter += 1
        heapq.heappush(self._heap, (self._now + delay, self._counter, src, dst, data, None))

    # -- running ------------------------------------------------------------------------------

    def step(self) -> bool:
        """Process the next instant; return False if nothing is pending at all."""
        self._poll()
        instant = self._next_instant()
        if instant is None:
            return False
        self._step_at(instant)
        return True

    def run(
        self,
        until: Callable[[], bool] | None = None,
        *,
        timeout: float,
        max_steps: int = _DEFAULT_MAX_STEPS,
    ) -> float:
        """Advance virtual time until `until()` is true; return the virtual time.

        `until` is checked before the first step and after every step. Without `until`, stops
        when nothing is pending. If the next instant lies more than `timeout` virtual seconds
        after the call, time is set to that limit and, when `until` was given,
        `SimulationTimeout` is raised (otherwise the call just returns). `SimulationTimeout`
        is also raised when `until` was given and nothing is pending any more, and after
        `max_steps` steps.
        """
        if timeout < 0:
            raise ValueError("timeout must be >= 0")
        deadline = self._now + timeout
        self._poll()
        if until is not None and until():
            return self._now
        steps = 0
        while True:
            self._poll()  # application calls made inside until() may have created output
            instant = self._next_instant()
            if instant is None:
                if until is None:
                    return self._now
                raise SimulationTimeout(
                    f"nothing pending at t={self._now!r} and the condition is still false"
                )
            if instant > deadline:
                self._now = max(self._now, deadline)
                if until is None:
                    return self._now
                raise SimulationTimeout(f"condition still false after {timeout!r}s (virtual)")
            if steps >= max_steps:
                raise SimulationTimeout(f"still running after {max_steps} steps at t={instant!r}")
            self._step_at(instant)
            steps += 1
            if until is not None and until():
                return self._now

    def next_event_time(self) -> float | None:
        """When the next delivery or node timer is due (after polling for new output)."""
        self._poll()
        return self._next_instant()

    def run_for(self, duration: float) -> None:
        """Process everything due in the next `duration` seconds, then set now = start + duration.

        Raises `SimulationTimeout` after 5,000,000 steps (a node re-arming a past timer).
        """
        if duration < 0:
            raise ValueError("duration must be >= 0")
        end = self._now + duration
        self.run(timeout=duration)
        self._now = end

    # -- internals ----------------------------------------------------------------------------

    def _link(self, src_ip: str, dst_ip: str) -> _Link:
        key = (src_ip, dst_ip)
        link = self._links.get(key)
        if link is None:
            overhead = _IPV6_OVERHEAD if ":" in dst_ip else _IPV4_OVERHEAD
            link = _Link(self._configs.get(key, self._default_link), overhead)
            self._links[key] = link
        return link

    def _next_instant(self) -> float | None:
        best = self._heap[0][0] if self._heap else None
        for node in self._nodes.values():
            deadline = node.next_timer()
            if deadline is not None and (best is None or deadline < best):
                best = deadline
        if best is not None and best < self._now:
            best = self._now
        return best

    def _step_at(self, instant: float) -> None:
        self._now = now = instant
        heap = self._heap
        if heap and heap[0][0] <= now:
            self._deliver_due(now)
        for node in list(self._nodes.values()):
            deadline = node.next_timer()
            if deadline is not None and deadline <= now:
                node.handle_timer(now)
        self._poll()

    def _deliver_due(self, now: float) -> None:
        heap = self._heap
        nodes = self._nodes
        tracing = self._tracing
        pcap = self._pcap
        batches: dict[Address, list[tuple[bytes, Address]]] = {}
        while heap and heap[0][0] <= now:
            _, _, src, dst, data, link = heapq.heappop(heap)
            if dst not in nodes:
                if tracing:
                    self.trace_records.append(TraceRecord(now, src, dst, data, "no_route"))
                continue
            if link is not None:
                stats = link.stats
                stats.delivered += 1
                stats.bytes_delivered += len(data)
            if tracing:
                self.trace_records.append(TraceRecord(now, src, dst, data, "delivered"))
            if pcap is not None:
                pcap.write(now, src, dst, data)
            batch = batches.get(dst)
            if batch is None:
                batches[dst] = [(data, src)]
            else:
                batch.append((data, src))
        for dst, batch in batches.items():
            node = nodes.get(dst)
            if node is not None:
                node.receive_datagrams(batch, now)

    def _poll(self) -> None:
        now = self._now
        for _ in range(_MAX_POLL_ROUNDS):
            produced = False
            for address, node in list(self._nodes.items()):
                out = node.datagrams_to_send(now)
                if out:
                    produced = True
                    for data, dst in out:
                        self._transmit(address, dst, data)
            if not produced:
                return
        raise SimulationTimeout(
            f"nodes still producing datagrams after {_MAX_POLL_ROUNDS} polls at t={now!r}"
        )

    def _drop(self, src: Address, dst: Address, data: bytes, fate: str) -> None:
        if self._tracing:
            self.trace_records.append(TraceRecord(self._now, src, dst, data, fate))

    def _transmit(self, src: Address, dst: Address, data: bytes) -> None:
        """Push one datagram through filters and its link into the delivery heap."""
        now = self._now
        if self._tracing:
            self.trace_records.append(TraceRecord(now, src, dst, data, "sent"))
        for fn in self._filters:
            if fn(now, src, dst, data):
                self._drop(src, dst, data, "filtered")
                return
        link = self._links.get((src[0], dst[0]))
        if link is None:
            link = self._link(src[0], dst[0])
        cfg = link.config
        stats = link.stats
        stats.sent += 1
        wire_size = len(data) + link.overhead
        if wire_size > cfg.mtu:
            stats.mtu_drops += 1
            self._drop(src, dst, data, "mtu_drop")
            return

        rng = self._rng
        lost = cfg.loss > 0.0 and rng.random() < cfg.loss
        ge = cfg.burst_loss
        if ge is not None:
            if link.ge_bad:
                if rng.random() < ge.p_bad_to_good:
                    link.ge_bad = False
            elif rng.random() < ge.p_good_to_bad:
                link.ge_bad = True
            p = ge.loss_bad if link.ge_bad else ge.loss_good
            if p > 0.0 and (p >= 1.0 or rng.random() < p):
                lost = True
        if lost:
            stats.lost += 1
            self._drop(src, dst, data, "lost")
            return

        departure = now
        if cfg.rate is not None:
            queue = link.queue
            while queue and queue[0][0] <= now:
                link.queued_bytes -= queue.popleft()[1]
            if cfg.queue_bytes is not None and link.queued_bytes + wire_size > cfg.queue_bytes:
                stats.queue_drops += 1
                self._drop(src, dst, data, "queue_drop")
                return
            departure = max(now, link.busy_until) + wire_size * 8 / cfg.rate
            link.busy_until = departure
            queue.append((departure, wire_size))
            link.queued_bytes += wire_size

        self._schedule(link, departure, src, dst, data)
        if cfg.duplicate > 0.0 and rng.random() < cfg.duplicate:
            stats.duplicated += 1
            self._schedule(link, departure, src, dst, data)

    def _schedule(
        self, link: _Link, departure: float, src: Address, dst: Address, data: bytes
    ) -> None:
        """Delay (jitter, FIFO, reorder) and maybe corrupt one copy, then queue its delivery."""
        cfg = link.config
        rng = self._rng
        arrival = departure + cfg.delay
        if cfg.jitter > 0.0:
            arrival += rng.random() * cfg.jitter
        if arrival < link.last_arrival:
            arrival = link.last_arrival
        link.last_arrival = arrival
        if cfg.reorder > 0.0 and rng.random() < cfg.reorder:
            link.stats.reordered += 1
            arrival += cfg.reorder_delay
        if cfg.corrupt > 0.0 and data and rng.random() < cfg.corrupt:
            link.stats.corrupted += 1
            data = self._flip_bits(data, cfg.corrupt_model)
        self._counter += 1
        heapq.heappush(self._heap, (arrival, self._counter, src, dst, data, link))

    def _flip_bits(self, data: bytes, model: str) -> bytes:
        rng = self._rng
        nbits = len(data) * 8
        corrupted = bytearray(data)
        if model == "burst":
            length = min(rng.randint(1, 15), nbits)
            first = rng.randrange(nbits - length + 1)
            bits = range(first, first + length)
        else:
            bits = rng.sample(range(nbits), min(rng.randint(1, 3), nbits))  # type: ignore[assignment]
        for bit in bits:
            corrupted[bit >> 3] ^= 0x80 >> (bit & 7)
        return bytes(corrupted)
