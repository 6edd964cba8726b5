"""Drop-in sockets on the simulated network: ``utcp.SocketFactory`` binding on a
``TrioNetwork`` instead of UDP, so unmodified trio code runs on a virtual clock with
seeded loss."""

from __future__ import annotations

import errno
import os

from .._socket import SocketFactory
from ._network import Address
from ._trio_net import SimTransport, TrioNetwork

EPHEMERAL_FIRST = 49152
EPHEMERAL_LAST = 65535


class SimBinder:
    """A ``bind_transport`` for ``utcp.SocketFactory``: binds on ``net``.

    A wildcard address (``0.0.0.0``, ``::``) becomes ``host``, this process's address on the
    simulated network; port 0 takes the next free ephemeral port of that address. A taken
    address raises EADDRINUSE as a UDP bind would.
    """

    def __init__(self, net: TrioNetwork, host: str) -> None:
        self.net = net
        self.host = host
        self._next_port = EPHEMERAL_FIRST

    def __call__(self, address: Address, family: int) -> SimTransport:
        ip, port = address[0], address[1]
        if ip in ("0.0.0.0", "::", ""):
            ip = self.host
        if port != 0:
            try:
                return self.net.transport((ip, port))
            except ValueError:
                raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE)) from None
        for _ in range(EPHEMERAL_LAST - EPHEMERAL_FIRST + 1):
            port = self._next_port
            self._next_port = port + 1 if port < EPHEMERAL_LAST else EPHEMERAL_FIRST
            try:
                return self.net.transport((ip, port))
            except ValueError:
                continue  # taken: try the next one
        raise OSError(errno.EADDRINUSE, "no free simulated port")


def sim_socket_factory(net: TrioNetwork, host: str) -> SocketFactory:
    """A ``utcp.SocketFactory`` whose sockets live on ``net`` at ``host``; install it with
    ``utcp.install(...)`` inside a run (typically under ``MockClock(autojump_threshold=0)``)."""
    return SocketFactory(bind_transport=SimBinder(net, host))
