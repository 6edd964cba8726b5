"""utcp against the Linux kernel's own TCP: a network namespace holding a TUN device, and a
gateway that carries utcp's datagrams to the TUN as IPv4 packets and back (WIRE.md).

Only for tests run as root on Linux. The namespace gets a fresh name and the TUN device is
created inside it (the host's interfaces and routes are never touched); ``NetnsTun.close``
removes both. The gateway listens on 127.0.0.1 only::

    utcp endpoint (127.0.0.1:X) <-UDP-> TunGateway (127.0.0.1:G) <-IPv4-> TUN <-> kernel TCP

A datagram from utcp is one TCP segment (WIRE.md); the gateway verifies utcp's checksum (no
pseudo-header), puts the segment in an IPv4 packet from ``virtual_address`` to
``kernel_address`` with the RFC 9293 3.1 checksum over the IPv4 pseudo-header, and writes it
to the TUN. An IPv4/TCP packet read from the TUN for ``virtual_address`` is verified the same
way, unwrapped, given WIRE.md's checksum and sent to utcp; anything else (IPv6 router
solicitations...) is counted and ignored. TCP ports are never rewritten.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import itertools
import os
import shutil
import socket as _socket
import struct
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO

import trio

from .._pcap import IPPROTO_TCP, IPV4_HEADER, ipv4_header, ipv4_pseudo_header, set_tcp_checksum
from .._wire import RST, SYN, Address, DecodeError, Segment, decode_untrusted, internet_checksum

# linux/if_tun.h
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000  # linux/sched.h

# RFC 2544's benchmarking range, never routed: the kernel's end of the TUN and utcp's address.
KERNEL_ADDRESS = "198.18.0.1"
VIRTUAL_ADDRESS = "198.18.0.2"
PREFIX_LEN = 30
TUN_NAME = "utun0"  # the device lives alone in its namespace, so the name need not be unique

_IPV4_FRAGMENT_BITS = 0x3FFF  # MF and the fragment offset
_BATCH = 256  # packets moved per wake-up before yielding
_IP_COMMAND_TIMEOUT = 10.0
_counter = itertools.count()


class TunUnavailable(Exception):
    """This machine cannot host the namespace and TUN device (the caller skips)."""


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(("-n", netns) if netns else ()), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=_IP_COMMAND_TIMEOUT)
    if done.returncode != 0:
        raise OSError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


@dataclass
class NetnsTun:
    """A network namespace holding one TUN device (IFF_TUN | IFF_NO_PI, raw IP packets),
    addressed ``kernel_address``/30 and up. ``fd`` is the non-blocking TUN file descriptor."""

    netns: str
    ifname: str
    fd: int
    mtu: int
    kernel_address: str = KERNEL_ADDRESS
    virtual_address: str = VIRTUAL_ADDRESS
    closed: bool = False

    def close(self) -> None:
        """Close the TUN (which deletes the device) and delete the namespace. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            os.close(self.fd)
        finally:
            subprocess.run(
                ["ip", "netns", "del", self.netns],
                capture_output=True,
                timeout=_IP_COMMAND_TIMEOUT,
                check=False,
            )


def create_netns_tun(*, mtu: int = 1500, prefix: str = "utcp-t") -> NetnsTun:
    """Create a namespace ``<prefix>-<pid>-<n>`` with a TUN device inside, configured and up.

    Raises :class:`TunUnavailable` when not root, without /dev/net/tun or ``ip``, or when
    ``ip netns add`` fails; anything created before a later failure is removed again.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise TunUnavailable("needs root (network namespaces and TUN devices)")
    if not os.path.exists("/dev/net/tun"):
        raise TunUnavailable("/dev/net/tun is missing")
    if shutil.which("ip") is None:
        raise TunUnavailable("the iproute2 'ip' command is missing")
    netns = f"{prefix}-{os.getpid()}-{next(_counter)}"
    try:
        _ip("netns", "add", netns)
    except (OSError, subprocess.SubprocessError) as exc:
        raise TunUnavailable(f"ip netns add failed: {exc}") from exc
    fd = -1
    try:
        fd = _open_tun_in_netns(netns, TUN_NAME)
        tun = NetnsTun(netns=netns, ifname=TUN_NAME, fd=fd, mtu=mtu)
        fd = -1  # owned by tun now
        try:
            address = f"{tun.kernel_address}/{PREFIX_LEN}"
            _ip("addr", "add", address, "dev", tun.ifname, netns=netns)
            _ip("link", "set", tun.ifname, "mtu", str(mtu), "txqueuelen", "4000", netns=netns)
            _ip("link", "set", tun.ifname, "up", netns=netns)
        except BaseException:
            tun.close()
            raise
        return tun
    except BaseException:
        if fd >= 0:
            os.close(fd)
        subprocess.run(
            ["ip", "netns", "del", netns],
            capture_output=True,
            timeout=_IP_COMMAND_TIMEOUT,
            check=False,
        )
        raise


def _open_tun_in_netns(netns: str, ifname: str) -> int:
    """Open /dev/net/tun from a thread that has joined ``netns``: the TUN device is created
    in the namespace the file was opened in, so it never appears in the host's."""
    result: list[int] = []
    failure: list[BaseException] = []

    def in_thread() -> None:
        # setns(2) moves only the calling thread; this one exits right after.
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            with open(f"/run/netns/{netns}", "rb") as target:
                if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns into {netns}: {os.strerror(code)}")
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            try:
                ifr = struct.pack("16sH22x", ifname.encode(), IFF_TUN | IFF_NO_PI)
                fcntl.ioctl(fd, TUNSETIFF, ifr)
                os.set_blocking(fd, False)
            except BaseException:
                os.close(fd)
                raise
            result.append(fd)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=in_thread, name=f"open TUN in {netns}")
    thread.start()
    thread.join(_IP_COMMAND_TIMEOUT)
    if failure:
        raise failure[0]
    if not result:
        raise OSError(errno.ETIMEDOUT, "opening the TUN device did not finish")
    return result[0]


# ---------------------------------------------------------------- packet conversion


def segment_to_ipv4(segment: bytes | bytearray, src: bytes, dst: bytes, ident: int) -> bytes:
    """Wrap one utcp segment in an IPv4 packet, TCP checksum redone with the pseudo-header."""
    tcp = bytearray(segment)
    set_tcp_checksum(tcp, ipv4_pseudo_header(src, dst, len(tcp)))
    return ipv4_header(src, dst, len(tcp), ident) + tcp


def ipv4_to_segment(packet: bytes, dst: bytes) -> tuple[bytearray, bool] | None:
    """The TCP segment of an unfragmented IPv4/TCP packet for ``dst``, with WIRE.md's
    checksum (no pseudo-header), and whether the packet's own TCP checksum verified; None for
    anything else."""
    if len(packet) < IPV4_HEADER.size or packet[0] >> 4 != 4:
        return None
    _vhl, _tos, total, _ident, frag, _ttl, proto, _csum, src, pkt_dst = IPV4_HEADER.unpack_from(
        packet
    )
    ihl = (packet[0] & 0x0F) * 4
    if proto != IPPROTO_TCP or pkt_dst != dst or frag & _IPV4_FRAGMENT_BITS:
        return None
    if ihl < IPV4_HEADER.size or total > len(packet) or total < ihl + 20:
        return None
    tcp = bytearray(packet[ihl:total])
    valid = internet_checksum(ipv4_pseudo_header(src, pkt_dst, len(tcp)) + tcp) == 0
    set_tcp_checksum(tcp)  # WIRE.md: no pseudo-header
    return tcp, valid


# ---------------------------------------------------------------- the gateway


@dataclass
class DirectionStats:
    """What crossed the gateway in one direction."""

    segments: int = 0
    payload_bytes: int = 0
    max_payload: int = 0
    resets: int = 0
    fins: int = 0
    # RFC 7323 3.2: once negotiated, every segment but a RST carries timestamps.
    missing_timestamps: int = 0
    bad_checksums: int = 0  # the sender's own checksum did not verify
    undecodable: int = 0
    send_failures: int = 0
    syns: list[Segment] = field(default_factory=list)
    rst_segments: list[str] = field(default_factory=list)


@dataclass
class GatewayStats:
    to_kernel: DirectionStats = field(default_factory=DirectionStats)
    to_utcp: DirectionStats = field(default_factory=DirectionStats)
    ignored_packets: int = 0  # from the TUN, not IPv4/TCP to the virtual address
    foreign_datagrams: int = 0  # on the UDP socket, not from utcp's address


class TunGateway:
    """Bridges a utcp endpoint's UDP address and a :class:`NetnsTun` (see the module
    docstring). ``address`` is the gateway's UDP address: utcp's peer for every connection.
    Run :meth:`run` in a nursery; cancel it to stop, then :meth:`close`."""

    def __init__(self, tun: NetnsTun, utcp_address: Address) -> None:
        self.tun = tun
        self.utcp_address = utcp_address
        self.stats = GatewayStats()
        self._kernel = ipaddress.IPv4Address(tun.kernel_address).packed
        self._virtual = ipaddress.IPv4Address(tun.virtual_address).packed
        self._ident = 0
        sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
        try:
            for opt in (_socket.SO_RCVBUF, _socket.SO_SNDBUF):
                sock.setsockopt(_socket.SOL_SOCKET, opt, 4 << 20)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        host, port = sock.getsockname()
        self.address: Address = (str(host), int(port))

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._utcp_to_kernel)
            nursery.start_soon(self._kernel_to_utcp)

    def close(self) -> None:
        if self._sock.fileno() != -1:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()

    def _note(self, stats: DirectionStats, data: bytes | bytearray) -> None:
        try:
            seg = decode_untrusted(data)
        except DecodeError as exc:
            if exc.reason == "checksum":
                stats.bad_checksums += 1
            else:
                stats.undecodable += 1
            return
        stats.segments += 1
        size = len(seg.payload)
        stats.payload_bytes += size
        stats.max_payload = max(stats.max_payload, size)
        if seg.flags & SYN:
            seg.payload = bytes(seg.payload)
            stats.syns.append(seg)
        elif seg.timestamps is None and not seg.flags & RST:
            stats.missing_timestamps += 1
        if seg.flags & RST:
            stats.resets += 1
            stats.rst_segments.append(seg.describe())
        if seg.fin:
            stats.fins += 1

    async def _utcp_to_kernel(self) -> None:
        sock, fd, stats = self._sock, self.tun.fd, self.stats.to_kernel
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(_BATCH):
                try:
                    data, addr = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue  # an ICMP error reported on the socket; no datagram
                if (addr[0], addr[1]) != self.utcp_address:
                    self.stats.foreign_datagrams += 1
                    continue
                self._note(stats, data)  # decoding also verifies utcp's checksum (WIRE.md)
                if len(data) < 20:
                    continue
                self._ident += 1
                packet = segment_to_ipv4(data, self._virtual, self._kernel, self._ident)
                try:
                    os.write(fd, packet)
                except OSError:
                    stats.send_failures += 1
            await trio.lowlevel.checkpoint()

    async def _kernel_to_utcp(self) -> None:
        sock, fd, stats = self._sock, self.tun.fd, self.stats.to_utcp
        while True:
            await trio.lowlevel.wait_readable(fd)
            for _ in range(_BATCH):
                try:
                    packet = os.read(fd, 65535)
                except (BlockingIOError, InterruptedError):
                    break
                converted = ipv4_to_segment(packet, self._virtual)
                if converted is None:
                    self.stats.ignored_packets += 1
                    continue
                tcp, valid = converted
                if not valid:
                    stats.bad_checksums += 1
                self._note(stats, tcp)
                try:
                    sock.sendto(tcp, self.utcp_address)
                except OSError:
                    stats.send_failures += 1  # full or refused: lost, TCP retransmits
            await trio.lowlevel.checkpoint()


# ---------------------------------------------------------------- processes in the namespace


class NetnsProcess:
    """A process run with ``ip netns exec`` (which execs, so ``pid`` is the command's own):
    stdout is read line by line, stderr kept in a file for failure messages."""

    def __init__(self, process: trio.Process, stderr: IO[bytes]) -> None:
        self.process = process
        self._stderr = stderr
        self._buffer = bytearray()
        self._eof = False

    @classmethod
    async def start(cls, netns: str, argv: Sequence[str]) -> NetnsProcess:
        stderr = tempfile.TemporaryFile(prefix="utcp-netns-")  # noqa: SIM115 - closed in aclose
        try:
            process = await trio.lowlevel.open_process(
                ["ip", "netns", "exec", netns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        except BaseException:
            stderr.close()
            raise
        return cls(process, stderr)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def read_line(self) -> str:
        """The next line of stdout without its newline; '' at end of file."""
        stdout = self.process.stdout
        assert stdout is not None
        while b"\n" not in self._buffer and not self._eof:
            chunk = await stdout.receive_some(65536)
            if not chunk:
                self._eof = True
            self._buffer += chunk
        line, _sep, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line.decode(errors="replace")

    async def read_rest(self) -> str:
        """Everything left on stdout, up to end of file."""
        stdout = self.process.stdout
        assert stdout is not None
        while not self._eof:
            chunk = await stdout.receive_some(65536)
            if not chunk:
                self._eof = True
            self._buffer += chunk
        text, self._buffer = bytes(self._buffer), bytearray()
        return text.decode(errors="replace")

    async def wait(self) -> int:
        return await self.process.wait()

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    async def aclose(self) -> None:
        """Kill the process (by its pid) if it still runs, reap it, release its pipes."""
        if self.process.returncode is None:
            self.process.kill()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(5):
                await self.process.wait()
            for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
                if pipe is not None:
                    await pipe.aclose()
        self._stderr.close()
