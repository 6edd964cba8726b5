"""Handshake timing on the virtual clock, SYN loss and backoff, and a pcap of a real run."""

from __future__ import annotations

import io
import struct

import pytest

from utcp._config import Config
from utcp._pcap import PcapWriter
from utcp._state import State
from utcp._wire import SYN, decode_untrusted
from utcp.testing import CLIENT_ADDR, SERVER_ADDR, HostPair, LinkConfig

ONE_WAY = 0.035  # RTT 70 ms


def established_times(pair: HostPair) -> dict[str, float]:
    return {who: t for t, who, _old, new in pair.state_log if new is State.ESTABLISHED}


def test_client_established_after_one_rtt_server_after_one_and_a_half() -> None:
    pair = HostPair(seed=1, link=LinkConfig(delay=ONE_WAY))
    pair.connect()
    pair.net.run_for(1.0)  # let the server's view settle and record its state change
    times = established_times(pair)
    assert times["client"] == pytest.approx(2 * ONE_WAY, abs=1e-9)
    assert times["server"] == pytest.approx(3 * ONE_WAY, abs=1e-9)


@pytest.mark.parametrize("lost", [1, 2, 3])
def test_lost_syns_are_retransmitted_after_initial_rto_then_doubled(lost: int) -> None:
    pair = HostPair(seed=2, link=LinkConfig(delay=ONE_WAY), trace=True)
    dropped: list[float] = []

    def drop_syns(now: float, src: object, dst: object, data: bytes) -> bool:
        seg = decode_untrusted(data)
        if seg.flags == SYN and len(dropped) < lost:
            dropped.append(now)
            return True
        return False

    pair.net.add_filter(drop_syns)
    pair.connect()
    syn_times = [
        r.time
        for r in pair.net.trace_records
        if r.fate == "sent" and r.src == CLIENT_ADDR and decode_untrusted(r.data).flags == SYN
    ]
    # RFC 6298 (2.1): initial RTO 1 s; (5.5): doubled on every expiry.
    expected = [0.0, 1.0, 3.0, 7.0][: lost + 1]
    assert syn_times == pytest.approx(expected, abs=1e-9)
    assert dropped == pytest.approx(expected[:lost], abs=1e-9)
    times = established_times(pair)
    assert times["client"] == pytest.approx(expected[-1] + 2 * ONE_WAY, abs=1e-9)


def test_connect_times_out_against_a_silent_peer() -> None:
    cfg = Config(connect_timeout=20.0)
    pair = HostPair(seed=3, link=LinkConfig(delay=0.01), config=cfg)
    pair.net.add_filter(lambda now, src, dst, data: dst == SERVER_ADDR)
    conn = pair.client.connect(SERVER_ADDR, pair.now)
    pair.net.run(lambda: conn.closed, timeout=100)
    assert isinstance(conn.error, TimeoutError)
    assert pair.now == pytest.approx(20.0)
    # SYNs at 0, 1, 3, 7, 15: five sent before the 20 s connect timeout.
    assert conn.stats.segments_sent == 5


def test_connection_refused_when_no_listener() -> None:
    pair = HostPair(seed=4, link=LinkConfig(delay=0.01))
    conn = pair.client.connect(SERVER_ADDR, pair.now, remote_port=81)
    pair.net.run(lambda: conn.closed, timeout=5)
    assert isinstance(conn.error, ConnectionRefusedError)
    assert pair.now == pytest.approx(0.02)


def test_pcap_of_a_run_reads_back_as_tcp_over_ipv4() -> None:
    buf = io.BytesIO()
    writer = PcapWriter(buf)
    pair = HostPair(seed=5, link=LinkConfig(delay=0.01), pcap=writer)
    pair.transfer(b"hello" * 1000, b"world" * 1000)
    writer.close()
    raw = buf.getvalue()
    magic, _vmaj, _vmin, _tz, _sig, _snap, linktype = struct.unpack_from("<IHHiIII", raw)
    assert magic == 0xA1B2C3D4 and linktype == 101
    pos, flags_seen, payload = 24, set(), 0
    while pos < len(raw):
        _sec, _usec, incl, _orig = struct.unpack_from("<IIII", raw, pos)
        pkt = raw[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        assert pkt[0] >> 4 == 4 and pkt[9] == 6  # IPv4 carrying TCP
        tcp = pkt[(pkt[0] & 15) * 4 :]
        seg = decode_untrusted(tcp[:16] + b"\0\0" + tcp[18:])  # pcap holds the real TCP sum
        flags_seen.add(seg.flags)
        payload += len(seg.payload)
    assert payload >= 10_000
    assert any(f & SYN for f in flags_seen)
