"""Datagram transports the endpoint runs over: a real UDP socket, or (in utcp.testing) a
simulated network on trio's clock. The endpoint calls the non-blocking methods directly and
only awaits when the socket is empty or full (ARCHITECTURE.md, "Performance shape")."""

from __future__ import annotations

import errno
import socket as _stdsocket
from typing import Protocol

import trio

from ._wire import Address

# Datagrams drained per wake-up before the core is fed (bounded so timers stay punctual).
RECV_BATCH = 256
MAX_DATAGRAM = 65535


class DatagramTransport(Protocol):
    def recv_batch(self, limit: int) -> list[tuple[bytes, Address]]:
        """Up to ``limit`` waiting datagrams, without blocking (maybe none)."""
        ...

    def send(self, data: bytes, address: Address) -> bool:
        """Send one datagram without blocking; False if the socket buffer is full."""
        ...

    async def wait_readable(self) -> None: ...

    async def wait_writable(self) -> None: ...

    def getsockname(self) -> Address: ...

    def close(self) -> None: ...

    @property
    def send_errors(self) -> int: ...


class UdpTransport:
    """A non-blocking stdlib UDP socket, waited on through trio's I/O manager."""

    def __init__(self, sock: _stdsocket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._send_errors = 0
        self.family = sock.family

    @classmethod
    def bind(cls, address: tuple[str, int], family: int | None = None) -> UdpTransport:
        if family is None:
            family = _stdsocket.AF_INET6 if ":" in address[0] else _stdsocket.AF_INET
        sock = _stdsocket.socket(family, _stdsocket.SOCK_DGRAM)
        try:
            if family == _stdsocket.AF_INET6:
                sock.setsockopt(_stdsocket.IPPROTO_IPV6, _stdsocket.IPV6_V6ONLY, 1)
            for opt in (_stdsocket.SO_RCVBUF, _stdsocket.SO_SNDBUF):
                sock.setsockopt(_stdsocket.SOL_SOCKET, opt, 4 << 20)
            sock.bind(address)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def recv_batch(self, limit: int) -> list[tuple[bytes, Address]]:
        out: list[tuple[bytes, Address]] = []
        recvfrom = self._sock.recvfrom
        for _ in range(limit):
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # Unconnected UDP sockets may still report ICMP errors (e.g. ECONNREFUSED
                # on some systems): they carry no datagram, so skip them.
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue
                raise
            out.append((data, (addr[0], addr[1])))
        return out

    def send(self, data: bytes, address: Address) -> bool:
        try:
            self._sock.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            # Unreachable, refused, too big...: the datagram is lost, TCP retransmits.
            self._send_errors += 1
        return True

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self._sock)

    async def wait_writable(self) -> None:
        await trio.lowlevel.wait_writable(self._sock)

    def getsockname(self) -> Address:
        addr = self._sock.getsockname()
        return (addr[0], addr[1])

    def close(self) -> None:
        if self._sock.fileno() != -1:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()

    @property
    def send_errors(self) -> int:
        return self._send_errors
