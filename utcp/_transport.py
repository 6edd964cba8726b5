"""Datagram transports the endpoint runs over: a real UDP socket, or (in utcp.testing) a
simulated network on trio's clock. The endpoint calls the non-blocking methods directly and
only awaits when the socket is empty or full (ARCHITECTURE.md, "Performance shape").

Kernel errors. On Linux the UDP socket sets ``IP_RECVERR`` (``IPV6_RECVERR`` on IPv6), so
every ICMP error a datagram of ours draws (port, host or network unreachable...) is queued
on the socket's error queue with the destination it concerns and the start of the datagram
itself (our TCP header: ports and sequence number). ``recv_errors`` drains that queue, and
the errors of ``sendto`` calls that failed at once (no route, refused by a local firewall,
too big), as ``KernelError`` records; the host matches each one to its connection (RFC 1122
4.2.3.9, RFC 5927). Elsewhere (no error queue) ICMP errors cannot be attributed: they are
counted and ignored, and a connection whose peer is gone fails by its timers alone; only the
immediate ``sendto`` errors still reach their connection.
"""

from __future__ import annotations

import errno
import logging
import socket as _stdsocket
import struct
import sys
from collections import deque
from typing import Any, Protocol

import trio

from ._errors import ORIGIN_ICMP, ORIGIN_ICMP6, KernelError
from ._wire import Address

log = logging.getLogger("utcp.transport")

# Datagrams drained per wake-up before the core is fed (bounded so timers stay punctual).
RECV_BATCH = 256
MAX_DATAGRAM = 65535

# linux/in.h and linux/in6.h; Python's socket module lacks them, so Linux's values are the
# fallback there (and only there: other systems have no such option).
_LINUX = sys.platform.startswith("linux")
IP_RECVERR: int | None = getattr(_stdsocket, "IP_RECVERR", 11 if _LINUX else None)
IPV6_RECVERR: int | None = getattr(_stdsocket, "IPV6_RECVERR", 25 if _LINUX else None)
MSG_ERRQUEUE: int = getattr(_stdsocket, "MSG_ERRQUEUE", 0x2000)
# linux/errqueue.h: struct sock_extended_err, then the offender's sockaddr (SO_EE_OFFENDER).
_SOCK_EXTENDED_ERR = struct.Struct("=IBBBBII")  # errno, origin, type, code, pad, info, data
_SOCKADDR_IN6_ADDR = slice(8, 24)  # family, port, flowinfo, then the 16-byte address
# The quoted datagram is read whole up to this many bytes (a TCP header with options).
_QUOTE_MAX = 128
_ERRQUEUE_ANCILLARY = 512
# Errors sendto may report about a datagram that therefore never left.
_SEND_ERRNOS = frozenset(
    {
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.EMSGSIZE,
        errno.EACCES,
        errno.EPERM,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.EADDRNOTAVAIL,
        errno.EINVAL,
    }
)


class DatagramTransport(Protocol):
    def recv_batch(self, limit: int) -> list[tuple[bytes, Address]]:
        """Up to ``limit`` waiting datagrams, without blocking (maybe none)."""
        ...

    def send(self, data: bytes, address: Address) -> bool:
        """Send one datagram without blocking; False if the socket buffer is full."""
        ...

    async def wait_readable(self) -> None: ...

    async def wait_writable(self) -> None: ...

    def recv_errors(self, limit: int) -> list[KernelError]:
        """Up to ``limit`` errors the kernel reported about datagrams we sent (ICMP errors
        from the error queue, failed sends), without blocking (maybe none)."""
        ...

    def getsockname(self) -> Address: ...

    def close(self) -> None: ...

    @property
    def send_errors(self) -> int:
        """Sends that failed so far (each one is also a ``recv_errors`` record)."""
        ...


class UdpTransport:
    """A non-blocking stdlib UDP socket, waited on through trio's I/O manager."""

    def __init__(self, sock: _stdsocket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._send_errors = 0
        self.family = sock.family
        self._errors: deque[KernelError] = deque()
        # ICMP errors seen only as a bare errno (no error queue): they name no destination.
        self.unattributed_errors = 0
        self.error_queue = self._enable_error_queue()

    def _enable_error_queue(self) -> bool:
        """Turn on IP_RECVERR / IPV6_RECVERR where the platform has it."""
        if self.family == _stdsocket.AF_INET6:
            level, option = _stdsocket.IPPROTO_IPV6, IPV6_RECVERR
        else:
            level, option = _stdsocket.IPPROTO_IP, IP_RECVERR
        if option is None:
            return False
        try:
            self._sock.setsockopt(level, option, 1)
        except OSError:
            return False
        return True

    @classmethod
    def bind(
        cls, address: tuple[str, int], family: int | None = None, *, reuse_port: bool = False
    ) -> UdpTransport:
        """A UDP socket bound to ``address``. With ``reuse_port`` it binds with
        ``SO_REUSEPORT``: several processes (or endpoints) may bind one port, and the kernel
        hashes each peer's 4-tuple to one of them, so a connection stays where it started."""
        if reuse_port and not hasattr(_stdsocket, "SO_REUSEPORT"):
            raise OSError(errno.ENOPROTOOPT, "SO_REUSEPORT is not available on this platform")
        if family is None:
            family = _stdsocket.AF_INET6 if ":" in address[0] else _stdsocket.AF_INET
        sock = _stdsocket.socket(family, _stdsocket.SOCK_DGRAM)
        try:
            if family == _stdsocket.AF_INET6:
                sock.setsockopt(_stdsocket.IPPROTO_IPV6, _stdsocket.IPV6_V6ONLY, 1)
            for opt in (_stdsocket.SO_RCVBUF, _stdsocket.SO_SNDBUF):
                sock.setsockopt(_stdsocket.SOL_SOCKET, opt, 4 << 20)
            if reuse_port:
                sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_REUSEPORT, 1)
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
                # A pending ICMP error, reported once as a bare errno (Linux does so with
                # IP_RECVERR, Windows always): with the error queue its details, destination
                # included, wait in the queue for recv_errors; without it they are lost.
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    if not self.error_queue:
                        self.unattributed_errors += 1
                    continue
                raise
            out.append((data, (addr[0], addr[1])))
        return out

    def send(self, data: bytes, address: Address) -> bool:
        for _attempt in range(2):
            try:
                self._sock.sendto(data, address)
            except (BlockingIOError, InterruptedError):
                return False
            except ConnectionRefusedError:
                # A send is never refused by its own destination: this is the pending
                # error of an earlier ICMP message (Linux reports it so with IP_RECVERR,
                # its details wait in the error queue). Reporting it cleared it, and this
                # datagram never left: send it again (once; TCP retransmits it anyway).
                if not self.error_queue:
                    self.unattributed_errors += 1
                continue
            except OSError as exc:
                # Unreachable, refused by a firewall, too big...: the datagram is lost (TCP
                # retransmits) and the error goes to its connection through recv_errors.
                self._send_errors += 1
                code = exc.errno if exc.errno in _SEND_ERRNOS else errno.EIO
                err = KernelError((address[0], address[1]), code, quoted=bytes(data))
                self._errors.append(err)
            return True
        return True

    def recv_errors(self, limit: int) -> list[KernelError]:
        out: list[KernelError] = []
        queued = self._errors
        while queued and len(out) < limit:
            out.append(queued.popleft())
        if not self.error_queue:
            return out
        recvmsg = self._sock.recvmsg
        while len(out) < limit:
            try:
                data, ancdata, _flags, addr = recvmsg(_QUOTE_MAX, _ERRQUEUE_ANCILLARY, MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            err = _parse_queued_error(data, ancdata, addr)
            if err is not None:
                out.append(err)
        return out

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


def _parse_queued_error(
    data: bytes, ancdata: list[tuple[int, int, bytes]], addr: Any
) -> KernelError | None:
    """A KernelError from one MSG_ERRQUEUE message: ``data`` is the datagram we sent (as
    far as the error quoted it), ``addr`` its destination, and the IP_RECVERR /
    IPV6_RECVERR control message a ``struct sock_extended_err`` (linux/errqueue.h)."""
    for level, kind, cdata in ancdata:
        if not (
            (level == _stdsocket.IPPROTO_IP and kind == IP_RECVERR)
            or (level == _stdsocket.IPPROTO_IPV6 and kind == IPV6_RECVERR)
        ):
            continue
        if len(cdata) < _SOCK_EXTENDED_ERR.size or not addr:
            return None
        code, origin, icmp_type, icmp_code, _pad, info, _data = _SOCK_EXTENDED_ERR.unpack_from(
            cdata
        )
        offender = _offender(cdata[_SOCK_EXTENDED_ERR.size :], origin)
        destination = (str(addr[0]), int(addr[1]))
        return KernelError(
            destination, code, origin, icmp_type, icmp_code, bytes(data) or None, info, offender
        )
    log.debug("error queue message without an extended error: %r", ancdata)
    return None


def _offender(raw: bytes, origin: int) -> str | None:
    """SO_EE_OFFENDER: the sockaddr after the extended error (ICMP origins only)."""
    if origin not in (ORIGIN_ICMP, ORIGIN_ICMP6) or len(raw) < 8:
        return None
    family = int.from_bytes(raw[:2], sys.byteorder)
    if family == _stdsocket.AF_INET:
        return _stdsocket.inet_ntop(_stdsocket.AF_INET, raw[4:8])
    if family == _stdsocket.AF_INET6 and len(raw) >= 24:
        return _stdsocket.inet_ntop(_stdsocket.AF_INET6, raw[_SOCKADDR_IN6_ADDR])
    return None
