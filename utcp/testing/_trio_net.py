"""The simulated network on trio's clock: real utcp endpoints over simulated links.

``TrioNetwork`` drives a ``SimNetwork`` from a trio system task, so under
``trio.testing.MockClock(autojump_threshold=0)`` a 60-second TIME-WAIT or a two-hour
keepalive costs milliseconds of real time, and the same seed replays the same losses.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import trio

from .._config import Config
from .._endpoint import Endpoint
from .._errors import KernelError
from ._network import Address, LinkConfig, SimNetwork


class SimTransport:
    """A datagram socket on a ``TrioNetwork``: a network node on one side, the endpoint's
    ``DatagramTransport`` on the other."""

    def __init__(self, network: TrioNetwork, address: Address) -> None:
        self._network = network
        self.address = address
        self._inbox: deque[tuple[bytes, Address]] = deque()
        self._outbox: list[tuple[bytes, Address]] = []
        self._errors: deque[KernelError] = deque()
        self._readable = trio.lowlevel.ParkingLot()
        self.closed = False

    # -- Node side (called by SimNetwork) --
    def receive_datagrams(self, batch: Sequence[tuple[bytes, Address]], now: float) -> None:
        if not self.closed:
            self._inbox.extend(batch)
            self._readable.unpark_all()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self._outbox = self._outbox, []
        return out

    def next_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None

    # -- DatagramTransport side (called by the Endpoint) --
    def recv_batch(self, limit: int) -> list[tuple[bytes, Address]]:
        inbox = self._inbox
        return [inbox.popleft() for _ in range(min(limit, len(inbox)))]

    def inject_error(self, error: KernelError) -> None:
        """Queue an error as the kernel would (an ICMP error, a failed send): the endpoint
        takes it with ``recv_errors`` on its next drive step."""
        if not self.closed:
            self._errors.append(error)
            self._readable.unpark_all()

    def recv_errors(self, limit: int) -> list[KernelError]:
        errors = self._errors
        return [errors.popleft() for _ in range(min(limit, len(errors)))]

    def send(self, data: bytes, address: Address) -> bool:
        if not self.closed:
            self._outbox.append((data, address))
            self._network.kick()
        return True

    def send_batch(self, datagrams: Sequence[tuple[bytes, Address]]) -> int:
        for data, address in datagrams:
            self.send(data, address)
        return len(datagrams)

    def path_mss(self, address: Address) -> int | None:
        return None  # the family default: links check their own MTU

    async def wait_readable(self) -> None:
        while not self._inbox and not self._errors:
            if self.closed:
                raise trio.ClosedResourceError("simulated socket closed")
            await self._readable.park()

    async def wait_writable(self) -> None:
        await trio.lowlevel.checkpoint()

    def getsockname(self) -> Address:
        return self.address

    def close(self) -> None:
        if not self.closed:
            self._network.sync()  # what the endpoint sent last (a RST, say) still departs
            self.closed = True
            self._network.net.detach(self.address)
            self._readable.unpark_all()

    @property
    def send_errors(self) -> int:
        return 0


class TrioNetwork:
    """A ``SimNetwork`` whose virtual time is trio's clock. Create it inside ``trio.run``."""

    def __init__(self, *, seed: int, link: LinkConfig | None = None, trace: bool = False) -> None:
        self.net = SimNetwork(
            seed=seed,
            default_link=link or LinkConfig(),
            start_time=trio.current_time(),
            trace=trace,
        )
        self._kick: trio.Event = trio.Event()
        self.closed = False
        trio.lowlevel.spawn_system_task(self._driver, name="utcp simulated network")

    def kick(self) -> None:
        self._kick.set()

    def transport(self, address: Address) -> SimTransport:
        t = SimTransport(self, address)
        self.net.attach(address, t)
        return t

    def endpoint(
        self, address: Address, *, config: Config | None = None, auto_close: bool = False
    ) -> Endpoint:
        """A utcp endpoint bound to ``address`` on this network (see ``Endpoint``)."""
        return Endpoint(self.transport(address), config=config, auto_close=auto_close)

    def close(self) -> None:
        self.closed = True
        self._kick.set()

    def sync(self) -> None:
        """Bring the simulation up to trio's clock, taking every node's pending output."""
        net = self.net
        net.run_for(max(0.0, trio.current_time() - net.now))

    async def _driver(self) -> None:
        net = self.net
        while not self.closed:
            self.sync()
            deadline = net.next_event_time()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._kick.wait()
            self._kick = trio.Event()
