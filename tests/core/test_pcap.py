"""The pcap writer, read back by hand: headers, IP checksums and TCP pseudo-header checksums."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from utcp._pcap import LINKTYPE_RAW, PcapWriter
from utcp._wire import ACK, PSH, SYN, Segment, encode, internet_checksum


@dataclass
class Record:
    seconds: int
    micros: int
    orig_len: int
    packet: bytes


def read_pcap(data: bytes) -> tuple[tuple[int, ...], list[Record]]:
    """Parse a little-endian classic pcap file into its global header and records."""
    header = struct.unpack_from("<IHHiIII", data, 0)
    records = []
    pos = 24
    while pos < len(data):
        seconds, micros, incl_len, orig_len = struct.unpack_from("<IIII", data, pos)
        pos += 16
        records.append(Record(seconds, micros, orig_len, data[pos : pos + incl_len]))
        pos += incl_len
    return header, records


def pseudo_v4(packet: bytes) -> bytes:
    return packet[12:20] + struct.pack("!xBH", 6, len(packet) - 20)


def pseudo_v6(packet: bytes) -> bytes:
    return packet[8:40] + struct.pack("!I3xB", len(packet) - 40, 6)


def without_checksum(segment: bytes) -> bytes:
    return segment[:16] + b"\0\0" + segment[18:]


SYN_SEG = encode(Segment(40000, 80, 0xFFFFFF00, 0, SYN, 65535, mss=1452, timestamps=(1, 0)))
DATA_SEG = encode(Segment(80, 40000, 7, 0xFFFFFF01, PSH | ACK, 512, b"hello", timestamps=(2, 1)))


def test_ipv4_records() -> None:
    buf = io.BytesIO()
    writer = PcapWriter(buf)
    writer.write(1.5, ("198.18.0.1", 5000), ("198.18.0.2", 6000), SYN_SEG)
    writer.write(2.000001, ("198.18.0.2", 6000), ("198.18.0.1", 5000), memoryview(DATA_SEG))
    writer.close()
    assert not buf.closed  # a file it was given is flushed, not closed

    header, records = read_pcap(buf.getvalue())
    assert header == (0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW)
    assert [(r.seconds, r.micros) for r in records] == [(1, 500000), (2, 1)]
    for ident, (record, segment, src, dst) in enumerate(
        [
            (records[0], SYN_SEG, "c6120001", "c6120002"),
            (records[1], DATA_SEG, "c6120002", "c6120001"),
        ]
    ):
        packet = record.packet
        assert record.orig_len == len(packet) == 20 + len(segment)
        version_ihl, _, total, ip_id, frag, ttl, proto = struct.unpack_from("!BBHHHBB", packet)
        assert (version_ihl, total, ip_id, frag, ttl, proto) == (
            0x45, len(packet), ident, 0x4000, 64, 6,
        )  # fmt: skip
        assert packet[12:16].hex() == src and packet[16:20].hex() == dst
        assert internet_checksum(packet[:20]) == 0  # RFC 791 header checksum verifies
        tcp = packet[20:]
        assert internet_checksum(pseudo_v4(packet) + tcp) == 0  # RFC 9293 3.1
        assert tcp[16:18] != segment[16:18]  # rewritten, since utcp's has no pseudo-header
        assert without_checksum(tcp) == without_checksum(segment)


def test_ipv6_record() -> None:
    buf = io.BytesIO()
    writer = PcapWriter(buf)
    writer.write(3.0, ("2001:db8::1", 5000, 0, 0), ("2001:db8::2", 6000, 0, 0), DATA_SEG)
    [record] = read_pcap(buf.getvalue())[1]
    packet = record.packet
    first_word, payload_len, next_header, hop_limit = struct.unpack_from("!IHBB", packet)
    assert (first_word >> 28, payload_len, next_header, hop_limit) == (6, len(DATA_SEG), 6, 64)
    assert packet[8:24].hex() == "20010db8" + "00" * 11 + "01"
    assert packet[24:40].hex() == "20010db8" + "00" * 11 + "02"
    tcp = packet[40:]
    assert internet_checksum(pseudo_v6(packet) + tcp) == 0
    assert without_checksum(tcp) == without_checksum(DATA_SEG)


def test_mixed_families_use_ipv4_mapped_ipv6() -> None:
    buf = io.BytesIO()
    PcapWriter(buf).write(0.0, ("198.18.2.1", 1), ("::1", 2), SYN_SEG)
    packet = read_pcap(buf.getvalue())[1][0].packet
    assert packet[0] >> 4 == 6
    assert packet[8:24] == bytes(10) + b"\xff\xff" + bytes((198, 18, 2, 1))
    assert internet_checksum(pseudo_v6(packet) + packet[40:]) == 0


def test_checksum_left_alone_when_asked_and_for_short_segments() -> None:
    unfixed = io.BytesIO()
    PcapWriter(unfixed, fix_checksum=False).write(
        0.0, ("198.18.0.1", 1), ("198.18.0.2", 2), SYN_SEG
    )
    assert read_pcap(unfixed.getvalue())[1][0].packet[20:] == SYN_SEG
    short = b"\x01\x02\x03"
    fixed = io.BytesIO()
    PcapWriter(fixed).write(0.0, ("198.18.0.1", 1), ("198.18.0.2", 2), short)
    assert read_pcap(fixed.getvalue())[1][0].packet[20:] == short


def test_snaplen_truncates_captured_bytes() -> None:
    buf = io.BytesIO()
    PcapWriter(buf, snaplen=40).write(0.0, ("198.18.0.1", 1), ("198.18.0.2", 2), DATA_SEG)
    header, [record] = read_pcap(buf.getvalue())
    assert header[5] == 40
    assert len(record.packet) == 40 and record.orig_len == 20 + len(DATA_SEG)


def test_bad_input_raises_value_error() -> None:
    writer = PcapWriter(io.BytesIO())
    with pytest.raises(ValueError):
        writer.write(0.0, ("localhost", 1), ("198.18.0.2", 2), SYN_SEG)
    with pytest.raises(ValueError):
        writer.write(-1.0, ("198.18.0.1", 1), ("198.18.0.2", 2), SYN_SEG)
    with pytest.raises(ValueError):
        writer.write(0.0, ("198.18.0.1", 1), ("198.18.0.2", 2), bytes(65516))


def test_open_owns_the_file(tmp_path: Path) -> None:
    path = tmp_path / "trace.pcap"
    with PcapWriter.open(path) as writer:
        writer.write(0.25, ("198.18.0.1", 1), ("198.18.0.2", 2), SYN_SEG)
    with pytest.raises(ValueError):  # the file is closed
        writer.write(0.5, ("198.18.0.1", 1), ("198.18.0.2", 2), SYN_SEG)
    header, [record] = read_pcap(path.read_bytes())
    assert header[0] == 0xA1B2C3D4 and record.micros == 250000


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_reads_valid_tcp(tmp_path: Path) -> None:
    path = tmp_path / "trace.pcap"
    writer = PcapWriter.open(path)
    writer.write(1.0, ("198.18.0.1", 5000), ("198.18.0.2", 6000), SYN_SEG)
    writer.write(2.0, ("2001:db8::2", 6000), ("2001:db8::1", 5000), DATA_SEG)
    writer.close()
    fields = ["tcp.srcport", "tcp.dstport", "tcp.len", "tcp.checksum.status"]
    result = subprocess.run(
        ["tshark", "-r", str(path), "-o", "tcp.check_checksum:TRUE", "-T", "fields"]
        + [arg for field in fields for arg in ("-e", field)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[:3] for row in rows] == [["40000", "80", "0"], ["80", "40000", "5"]]
    # Wireshark's checksum status 1 is "Good"; some versions print the name instead.
    assert all(row[3] in ("1", "Good") for row in rows), rows
