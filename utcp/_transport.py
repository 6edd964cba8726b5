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

Batching at the kernel boundary (Linux). On send, ``send_batch`` hands the kernel each run of
consecutive datagrams to one peer whose sizes are equal (the last may be shorter) in one
``sendmsg`` with a ``UDP_SEGMENT`` control message (UDP GSO): the kernel cuts the run into
the very datagrams it would have sent one by one, in the same order. On receive, the socket
sets ``UDP_GRO``, so the kernel may hand over several datagrams of one peer as one buffer,
with their size in a ``UDP_GRO`` control message; ``recv_batch`` cuts it back into
datagrams (``split_coalesced``). Each is detected when the transport is made (``gso`` and
``gro`` in ``TransportStats``) and falls back to one ``sendto``/``recvfrom`` per datagram
where the kernel lacks it, or where ``UTCP_UDP_OFFLOAD`` (a comma-separated subset of
``gso,gro``; ``none`` for neither) or the ``gso``/``gro`` arguments turn it off. A GSO send
the outgoing device refuses (``EIO``: no checksum offload) turns GSO off for good and
resends the run datagram by datagram. Neither changes what goes on the wire: the same
datagrams, in the same order.

Sizes. The MSS a connection announces derives from the MTU of the route toward its peer,
as kernel TCP derives it from the outgoing interface (RFC 9293 3.7.1, RFC 1122 4.2.2.6):
``path_mss`` reads ``IP_MTU``/``IPV6_MTU`` from a connected probe socket (with path MTU
discovery on, so the figure includes what the kernel learnt of the path) and caches it per
destination for ``PATH_MTU_TTL`` seconds (WIRE.md "Sizes").
"""

from __future__ import annotations

import errno
import logging
import os
import socket as _stdsocket
import struct
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ._errors import ORIGIN_ICMP, ORIGIN_ICMP6, KernelError
from ._wire import Address

log = logging.getLogger("utcp.transport")

# Datagrams drained per wake-up before the core is fed (bounded so timers stay punctual).
RECV_BATCH = 256
# ...and at most about this many bytes, so that the ACKs for a batch of large segments
# leave while the sender still has window (one batch is one round of ACKs).
RECV_BATCH_BYTES = 1 << 18
MAX_DATAGRAM = 65535
# Socket buffers asked for (the kernel caps them at net.core.rmem_max / wmem_max; what it
# granted is in TransportStats).
SOCKET_BUFFER = 4 << 20

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
# Kernel batching (linux/udp.h): UDP_SEGMENT takes the GSO segment size on send, UDP_GRO
# turns coalesced receive on and reports the segment size of each coalesced buffer.
SOL_UDP: int = getattr(_stdsocket, "SOL_UDP", 17)
UDP_SEGMENT = 103
UDP_GRO = 104
# Per GSO send: at most this many segments (UDP_MAX_SEGMENTS) and one IP datagram's worth of
# UDP payload in all (65535 less the IP and UDP headers).
GSO_MAX_SEGMENTS = 64
_UDP_PAYLOAD_MAX = {_stdsocket.AF_INET: 65535 - 20 - 8, _stdsocket.AF_INET6: 65535 - 8}
_GSO_SIZE = struct.Struct("=H")
_GRO_SPACE = _stdsocket.CMSG_SPACE(4) if hasattr(_stdsocket, "CMSG_SPACE") else 0
# What UTCP_UDP_OFFLOAD turns on when it is not set.
OFFLOAD_ENV = "UTCP_UDP_OFFLOAD"
# Path MTU (linux/in.h, linux/in6.h): IP_MTU / IPV6_MTU read a connected socket's route MTU;
# IP_PMTUDISC_DO / IPV6_PMTUDISC_DO make the probe's route include the learnt path MTU.
IP_MTU: int | None = getattr(_stdsocket, "IP_MTU", 14 if _LINUX else None)
IPV6_MTU: int | None = getattr(_stdsocket, "IPV6_MTU", 24 if _LINUX else None)
IP_MTU_DISCOVER: int | None = getattr(_stdsocket, "IP_MTU_DISCOVER", 10 if _LINUX else None)
IPV6_MTU_DISCOVER: int | None = getattr(_stdsocket, "IPV6_MTU_DISCOVER", 23 if _LINUX else None)
PMTUDISC_DO = 2
# WIRE.md "Sizes": the IP, UDP and TCP headers a segment's datagram carries.
_IP_HEADER = {_stdsocket.AF_INET: 20, _stdsocket.AF_INET6: 40}
_UDP_TCP_HEADERS = 8 + 20
# The largest MSS Config accepts (and the 16-bit option can carry with room for headers).
MSS_MAX = 65495
# Like Linux's ip_rt_mtu_expires: a path MTU is looked up again after this long.
PATH_MTU_TTL = 600.0
_PATH_CACHE_MAX = 4096

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


@dataclass
class TransportStats:
    """What the transport did at the kernel boundary (``Endpoint.statistics()``)."""

    gso: bool = False  # UDP GSO in use on send
    gro: bool = False  # UDP GRO in use on receive
    send_calls: int = 0  # sendto/sendmsg calls that sent something
    datagrams_sent: int = 0
    gso_sends: int = 0  # of the calls: GSO sends of two or more datagrams
    recv_calls: int = 0  # recvfrom/recvmsg calls that returned a datagram
    datagrams_received: int = 0
    gro_buffers: int = 0  # of the calls: buffers holding two or more datagrams
    rcvbuf: int = 0  # SO_RCVBUF / SO_SNDBUF as the kernel granted them
    sndbuf: int = 0

    @property
    def send_calls_saved(self) -> int:
        return self.datagrams_sent - self.send_calls

    @property
    def recv_calls_saved(self) -> int:
        return self.datagrams_received - self.recv_calls


class DatagramTransport(Protocol):
    def recv_batch(self, limit: int) -> Sequence[tuple[bytes | memoryview, Address]]:
        """About ``limit`` waiting datagrams (a coalesced buffer may take it past),
        without blocking (maybe none)."""
        ...

    def send_batch(self, datagrams: Sequence[tuple[bytes, Address]]) -> int:
        """Send the datagrams in order without blocking; how many left (fewer than all if
        the socket buffer filled up: the caller offers the rest again once writable)."""
        ...

    def path_mss(self, address: Address) -> int | None:
        """The MSS the route toward ``address`` allows (None: unknown, use the default)."""
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

    def __init__(
        self, sock: _stdsocket.socket, *, gso: bool | None = None, gro: bool | None = None
    ) -> None:
        """``gso``/``gro`` False keep the one-call-per-datagram path; None (the default)
        uses each where the kernel has it, unless ``UTCP_UDP_OFFLOAD`` leaves it out."""
        sock.setblocking(False)
        self._sock = sock
        self._send_errors = 0
        self.family = sock.family
        self._errors: deque[KernelError] = deque()
        # ICMP errors seen only as a bare errno (no error queue): they name no destination.
        self.unattributed_errors = 0
        self.error_queue = self._enable_error_queue()
        # Whether the error queue may hold something (see recv_errors): set until the first
        # drain, and again by every sign the kernel gives of a queued error.
        self._error_hint = True
        wanted = _offload_from_env()
        self.stats = TransportStats(
            rcvbuf=sock.getsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_RCVBUF),
            sndbuf=sock.getsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_SNDBUF),
        )
        self.stats.gso = ("gso" in wanted if gso is None else gso) and self._probe_gso()
        self.stats.gro = ("gro" in wanted if gro is None else gro) and self._enable_gro()
        self._gso_bytes = _UDP_PAYLOAD_MAX.get(self.family, 0)
        self._path_mss: dict[str, tuple[float, int | None]] = {}

    def _probe_gso(self) -> bool:
        """UDP GSO is there if the socket knows the option (Linux 4.18+)."""
        if not _LINUX:
            return False
        try:
            self._sock.getsockopt(SOL_UDP, UDP_SEGMENT)
        except OSError:
            return False
        return True

    def _enable_gro(self) -> bool:
        """Turn UDP GRO on (Linux 5.0+); False where the kernel refuses it."""
        if not _LINUX or not _GRO_SPACE:
            return False
        try:
            self._sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        except OSError:
            return False
        return True

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
        cls,
        address: tuple[str, int],
        family: int | None = None,
        *,
        reuse_port: bool = False,
        gso: bool | None = None,
        gro: bool | None = None,
    ) -> UdpTransport:
        """A UDP socket bound to ``address``. With ``reuse_port`` it binds with
        ``SO_REUSEPORT``: several processes (or endpoints) may bind one port, and the kernel
        hashes each peer's 4-tuple to one of them, so a connection stays where it started.
        ``gso``/``gro`` as for the constructor."""
        if reuse_port and not hasattr(_stdsocket, "SO_REUSEPORT"):
            raise OSError(errno.ENOPROTOOPT, "SO_REUSEPORT is not available on this platform")
        if family is None:
            family = _stdsocket.AF_INET6 if ":" in address[0] else _stdsocket.AF_INET
        sock = _stdsocket.socket(family, _stdsocket.SOCK_DGRAM)
        try:
            if family == _stdsocket.AF_INET6:
                sock.setsockopt(_stdsocket.IPPROTO_IPV6, _stdsocket.IPV6_V6ONLY, 1)
            for opt in (_stdsocket.SO_RCVBUF, _stdsocket.SO_SNDBUF):
                sock.setsockopt(_stdsocket.SOL_SOCKET, opt, SOCKET_BUFFER)
            if reuse_port:
                sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_REUSEPORT, 1)
            sock.bind(address)
        except BaseException:
            sock.close()
            raise
        return cls(sock, gso=gso, gro=gro)

    def recv_batch(self, limit: int) -> list[tuple[bytes | memoryview, Address]]:
        out: list[tuple[bytes | memoryview, Address]] = []
        stats = self.stats
        gro = stats.gro
        recvfrom = self._sock.recvfrom
        recvmsg = self._sock.recvmsg
        budget = RECV_BATCH_BYTES
        while len(out) < limit and budget > 0:
            try:
                if gro:
                    data, ancdata, _flags, addr = recvmsg(MAX_DATAGRAM, _GRO_SPACE)
                else:
                    data, addr = recvfrom(MAX_DATAGRAM)
                    ancdata = None
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # A pending ICMP error, reported once as a bare errno (Linux does so with
                # IP_RECVERR, Windows always): with the error queue its details, destination
                # included, wait in the queue for recv_errors; without it they are lost.
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    self._error_hint = True
                    if not self.error_queue:
                        self.unattributed_errors += 1
                    continue
                raise
            source = (addr[0], addr[1])
            stats.recv_calls += 1
            budget -= len(data)
            size = _gro_size(ancdata) if ancdata else 0
            if size and len(data) > size:
                stats.gro_buffers += 1
                parts = split_coalesced(data, size)
                stats.datagrams_received += len(parts)
                out.extend((part, source) for part in parts)
            else:
                stats.datagrams_received += 1
                out.append((data, source))
        if not out:
            # Woken (or a timer ran) with no datagram: an error queue that is not empty
            # keeps the socket readable (EPOLLERR), so this is where one is always drained.
            self._error_hint = True
        return out

    def send_batch(self, datagrams: Sequence[tuple[bytes, Address]]) -> int:
        if not self.stats.gso:
            for i, (data, address) in enumerate(datagrams):
                if not self.send(data, address):
                    return i
            return len(datagrams)
        done = 0
        for address, run in gso_runs(datagrams, self._gso_bytes):
            sent = self._send_run(run, address)
            done += sent
            if sent < len(run):
                break
        return done

    def _send_run(self, run: list[bytes], address: Address) -> int:
        """Send ``run`` (sizes equal but the last's) in one GSO call; how many left."""
        if len(run) > 1 and self.stats.gso:
            control = [(SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(len(run[0])))]
            try:
                self._sock.sendmsg(run, control, 0, address)
            except (BlockingIOError, InterruptedError):
                return 0
            except OSError as exc:
                self._error_hint = True
                if exc.errno == errno.EIO:
                    # The outgoing device cannot checksum GSO segments: never again here.
                    log.info("UDP GSO refused by the kernel (EIO): one datagram per call")
                    self.stats.gso = False
                # Anything else (a pending ICMP error, unreachable, too big...) the plain
                # path below reports per datagram, sending what it can.
            else:
                stats = self.stats
                stats.send_calls += 1
                stats.gso_sends += 1
                stats.datagrams_sent += len(run)
                return len(run)
        for i, data in enumerate(run):
            if not self.send(data, address):
                return i
        return len(run)

    def send(self, data: bytes, address: Address) -> bool:
        """Send one datagram without blocking; False if the socket buffer is full."""
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
                self._error_hint = True
                if not self.error_queue:
                    self.unattributed_errors += 1
                continue
            except OSError as exc:
                # Unreachable, refused by a firewall, too big...: the datagram is lost (TCP
                # retransmits) and the error goes to its connection through recv_errors.
                self._send_errors += 1
                self._error_hint = True
                code = exc.errno if exc.errno in _SEND_ERRNOS else errno.EIO
                err = KernelError((address[0], address[1]), code, quoted=bytes(data))
                self._errors.append(err)
                return True
            self.stats.send_calls += 1
            self.stats.datagrams_sent += 1
            return True
        return True

    def path_mss(self, address: Address) -> int | None:
        """The MSS the route toward ``address`` allows: its MTU less the IP, UDP and TCP
        headers, at most what one UDP datagram carries (and ``MSS_MAX``); None where the
        MTU cannot be read. Cached per destination for ``PATH_MTU_TTL`` seconds."""
        now = time.monotonic()
        cached = self._path_mss.get(address[0])
        if cached is not None and cached[0] > now:
            return cached[1]
        mtu = route_mtu(self.family, address)
        mss = None
        if mtu is not None:
            mss = min(
                mtu - _IP_HEADER[self.family] - _UDP_TCP_HEADERS,
                _UDP_PAYLOAD_MAX[self.family] - 20,
                MSS_MAX,
            )
            mss = mss if mss >= 64 else None
        if len(self._path_mss) >= _PATH_CACHE_MAX:
            self._path_mss.clear()
        self._path_mss[address[0]] = (now + PATH_MTU_TTL, mss)
        return mss

    def recv_errors(self, limit: int) -> list[KernelError]:
        out: list[KernelError] = []
        queued = self._errors
        while queued and len(out) < limit:
            out.append(queued.popleft())
        if not self.error_queue or not self._error_hint:
            # Linux reports each queued ICMP error through the socket's pending error
            # (sk_err, which the next recvfrom or sendto returns as an errno) and keeps the
            # socket readable while the queue holds anything; both set the hint. Without it
            # the queue is known empty, and asking would cost a system call per wake-up.
            return out
        recvmsg = self._sock.recvmsg
        budget = RECV_BATCH_BYTES
        while len(out) < limit and budget > 0:
            try:
                data, ancdata, _flags, addr = recvmsg(_QUOTE_MAX, _ERRQUEUE_ANCILLARY, MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                self._error_hint = False  # drained
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


def gso_runs(
    datagrams: Sequence[tuple[bytes, Address]], max_bytes: int
) -> list[tuple[Address, list[bytes]]]:
    """Cut ``datagrams`` into consecutive runs that one GSO send can carry: one destination,
    every datagram as long as the first except the last (which may be shorter), at most
    ``GSO_MAX_SEGMENTS`` and ``max_bytes`` in all. Order is kept: concatenating the runs
    gives ``datagrams`` back."""
    runs: list[tuple[Address, list[bytes]]] = []
    run: list[bytes] = []
    run_addr: Address | None = None
    size = total = 0
    for data, addr in datagrams:
        n = len(data)
        if (
            run
            and addr == run_addr
            and n <= size
            and len(run) < GSO_MAX_SEGMENTS
            and total + n <= max_bytes
            and len(run[-1]) == size  # nothing may follow a short datagram
        ):
            run.append(data)
            total += n
            continue
        run = [data]
        run_addr, size, total = addr, n, n
        runs.append((addr, run))
    return runs


def split_coalesced(data: bytes, size: int) -> list[memoryview]:
    """The datagrams of a UDP GRO buffer: ``size`` bytes each, the last maybe shorter."""
    view = memoryview(data)
    return [view[i : i + size] for i in range(0, len(data), size)]


def _gro_size(ancdata: list[tuple[int, int, bytes]]) -> int:
    """The segment size a UDP_GRO control message reports (0 if there is none)."""
    for level, kind, cdata in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and cdata:
            return int.from_bytes(cdata[:4], sys.byteorder)
    return 0


def route_mtu(family: int, address: Address) -> int | None:
    """The MTU of the route toward ``address`` (path MTU discovery on, so it includes what
    the kernel learnt of the path), read from a connected probe socket; None where the
    platform cannot tell."""
    if family == _stdsocket.AF_INET6:
        level, mtu_opt, disc_opt = _stdsocket.IPPROTO_IPV6, IPV6_MTU, IPV6_MTU_DISCOVER
    else:
        level, mtu_opt, disc_opt = _stdsocket.IPPROTO_IP, IP_MTU, IP_MTU_DISCOVER
    if mtu_opt is None or disc_opt is None:
        return None
    try:
        with _stdsocket.socket(family, _stdsocket.SOCK_DGRAM) as probe:
            probe.setsockopt(level, disc_opt, PMTUDISC_DO)
            probe.connect(address)
            return int(probe.getsockopt(level, mtu_opt))
    except OSError:
        return None


def _offload_from_env() -> frozenset[str]:
    """What ``UTCP_UDP_OFFLOAD`` allows: a comma-separated subset of ``gso,gro`` (``none``
    or empty: neither); both when it is not set."""
    value = os.environ.get(OFFLOAD_ENV)
    if value is None:
        return frozenset({"gso", "gro"})
    return frozenset(part.strip().lower() for part in value.split(",")) & {"gso", "gro"}
