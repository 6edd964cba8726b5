"""A classic pcap writer that shows utcp datagrams as plain TCP to Wireshark and tshark.

Each record is a synthetic IP packet (link type ``LINKTYPE_RAW``) whose payload is the TCP
segment exactly as utcp carried it in UDP: an IPv4 header when both outer addresses are IPv4,
otherwise an IPv6 header (an IPv4 address next to an IPv6 one is written IPv4-mapped). The
outer UDP ports are not recorded; the TCP header inside carries the connection's own ports.

utcp's checksum has no pseudo-header (WIRE.md), so a capture would show every TCP checksum
as wrong. By default the writer replaces it, in its own copy, with the RFC 9293 3.1 checksum
over the IPv4 or IPv6 pseudo-header, which is what the tools verify.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from typing import BinaryIO

from ._wire import HEADER_LEN, Address, internet_checksum

LINKTYPE_RAW = 101  # tcpdump.org link-layer header types: raw IPv4 or IPv6, by version

_PCAP_MAGIC = 0xA1B2C3D4  # microsecond timestamps
_PCAP_VERSION = (2, 4)
_GLOBAL_HEADER = struct.Struct("<IHHiIII")  # magic, major, minor, thiszone, sigfigs, snap, link
_RECORD_HEADER = struct.Struct("<IIII")  # ts_sec, ts_usec, incl_len, orig_len

IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")  # RFC 791 3.1
_IPV6_HEADER = struct.Struct("!IHBB16s16s")  # RFC 8200 3
IPPROTO_TCP = 6
_IPV4_DF = 0x4000  # RFC 791 3.1: don't fragment; utcp never relies on fragmentation
_TTL = 64
_TCP_CHECKSUM_AT = 16  # RFC 9293 3.1: offset of the checksum field in the TCP header

# A socket address as Python gives it: (host, port), or for IPv6 (host, port, flow, scope).
SockAddress = Address | tuple[str, int, int, int]
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PcapWriter:
    """Writes utcp datagrams to a pcap stream as synthetic IP packets carrying TCP.

    The global header is written as soon as the writer is created. The writer flushes but
    does not close a file object it was given; one made by :meth:`open` is closed by
    :meth:`close`.
    """

    def __init__(
        self, fileobj: BinaryIO, *, snaplen: int = 65535, fix_checksum: bool = True
    ) -> None:
        self._file = fileobj
        self._snaplen = snaplen
        self._fix_checksum = fix_checksum
        self._owns_file = False
        self._ip_id = 0
        fileobj.write(_GLOBAL_HEADER.pack(_PCAP_MAGIC, *_PCAP_VERSION, 0, 0, snaplen, LINKTYPE_RAW))

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> PcapWriter:
        """Create (or truncate) the file at ``path``; :meth:`close` closes it."""
        fileobj = open(path, "wb")  # noqa: SIM115 - the writer owns it until close()
        try:
            writer = cls(fileobj)
        except BaseException:
            fileobj.close()
            raise
        writer._owns_file = True
        return writer

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def write(
        self,
        timestamp: float,
        src: SockAddress,
        dst: SockAddress,
        segment_bytes: bytes | memoryview,
    ) -> None:
        """Record one datagram sent from the outer UDP address ``src`` to ``dst``.

        ``timestamp`` is in seconds (any epoch, not negative). Raises ``ValueError`` if an
        address is not an IP address literal or the segment is over 65,515 bytes.
        """
        if timestamp < 0:
            raise ValueError(f"negative timestamp {timestamp}")
        segment = bytearray(segment_bytes)
        if len(segment) > 0xFFFF - IPV4_HEADER.size:
            raise ValueError(f"segment of {len(segment)} bytes does not fit an IP packet")
        src_ip = ipaddress.ip_address(src[0])
        dst_ip = ipaddress.ip_address(dst[0])
        if src_ip.version == 4 and dst_ip.version == 4:
            self._fix(segment, ipv4_pseudo_header(src_ip.packed, dst_ip.packed, len(segment)))
            header = ipv4_header(src_ip.packed, dst_ip.packed, len(segment), self._ip_id)
            self._ip_id = (self._ip_id + 1) & 0xFFFF
        else:
            src_packed, dst_packed = _as_ipv6(src_ip), _as_ipv6(dst_ip)
            # RFC 8200 8.1: the upper-layer pseudo-header.
            pseudo = src_packed + dst_packed + struct.pack("!I3xB", len(segment), IPPROTO_TCP)
            self._fix(segment, pseudo)
            header = _IPV6_HEADER.pack(
                6 << 28, len(segment), IPPROTO_TCP, _TTL, src_packed, dst_packed
            )
        packet = header + segment
        micros = round(timestamp * 1_000_000)
        seconds, micros = divmod(micros, 1_000_000)
        captured = packet[: self._snaplen]
        self._file.write(_RECORD_HEADER.pack(seconds, micros, len(captured), len(packet)))
        self._file.write(captured)

    def close(self) -> None:
        """Flush; also close the file if :meth:`open` created it."""
        if self._owns_file:
            self._file.close()
        elif not self._file.closed:
            self._file.flush()

    def _fix(self, segment: bytearray, pseudo: bytes) -> None:
        if self._fix_checksum and len(segment) >= HEADER_LEN:
            set_tcp_checksum(segment, pseudo)


# IPv4 framing of a TCP segment, shared with the TUN gateway of utcp.testing.


def ipv4_pseudo_header(src: bytes, dst: bytes, tcp_length: int) -> bytes:
    """RFC 9293 3.1: the IPv4 pseudo-header the TCP checksum covers."""
    return src + dst + struct.pack("!xBH", IPPROTO_TCP, tcp_length)


def set_tcp_checksum(segment: bytearray, pseudo: bytes = b"") -> None:
    """Rewrite the segment's checksum over ``pseudo`` + the segment (RFC 9293 3.1); with no
    pseudo-header this is WIRE.md's checksum."""
    segment[_TCP_CHECKSUM_AT : _TCP_CHECKSUM_AT + 2] = b"\0\0"
    struct.pack_into("!H", segment, _TCP_CHECKSUM_AT, internet_checksum(pseudo + segment))


def ipv4_header(src: bytes, dst: bytes, payload_len: int, ident: int) -> bytes:
    """An IPv4 header (RFC 791 3.1) for a TCP payload, DF set, TTL 64."""
    fields = (0x45, 0, IPV4_HEADER.size + payload_len, ident & 0xFFFF, _IPV4_DF, _TTL, IPPROTO_TCP)
    header = IPV4_HEADER.pack(*fields, 0, src, dst)
    # RFC 791 3.1: the header checksum is the ones' complement checksum of the header.
    return IPV4_HEADER.pack(*fields, internet_checksum(header), src, dst)


def _as_ipv6(address: _IPAddress) -> bytes:
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{address}").packed  # RFC 4291 2.5.5.2
    return address.packed
