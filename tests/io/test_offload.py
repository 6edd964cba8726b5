"""The kernel boundary: UDP GSO on send and GRO on receive put the very datagrams of the
one-call-per-datagram path on the wire, in the same order; each falls back where it is off
or refused; the MSS a connection announces comes from the route MTU toward its peer."""

from __future__ import annotations

import errno
import hashlib
import random
import shutil
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing

import utcp
from utcp import Config
from utcp._endpoint import Endpoint
from utcp._host import Host
from utcp._transport import (
    GSO_MAX_SEGMENTS,
    OFFLOAD_ENV,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
    UdpTransport,
    gso_runs,
    split_coalesced,
)
from utcp._wire import Address, decode_untrusted
from utcp.testing import HostPair, LinkConfig, TrioNetwork
from utcp.testing._trio_net import SimTransport

LINUX = sys.platform.startswith("linux")
A: Address = ("198.18.0.1", 1000)
B: Address = ("198.18.0.2", 2000)
IPV4_UDP_MAX = 65507


def sized(sizes: Sequence[int], addr: Address = A, tag: int = 0) -> list[tuple[bytes, Address]]:
    return [(bytes([tag + i & 0xFF]) * n, addr) for i, n in enumerate(sizes)]


# ----------------------------------------------------------------- grouping and splitting


@pytest.mark.parametrize(
    ("datagrams", "runs"),
    [
        # equal sizes to one peer: one run; a shorter last one joins it
        (sized([1000, 1000, 1000, 400]), [4]),
        # nothing follows a short datagram in its run
        (sized([1000, 400, 1000]), [2, 1]),
        # a longer datagram starts a new run
        (sized([400, 1000, 1000]), [1, 2]),
        # another peer starts a new run (per-peer order kept, no reordering across peers)
        (sized([1000, 1000]) + sized([1000], B) + sized([1000, 1000]), [2, 1, 2]),
        # at most GSO_MAX_SEGMENTS per run
        (sized([100] * (GSO_MAX_SEGMENTS + 3)), [GSO_MAX_SEGMENTS, 3]),
        # at most one UDP datagram's payload in all
        (sized([30000, 30000, 30000]), [2, 1]),
        (sized([65475, 61, 65475, 61]), [1, 1, 1, 1]),
        ([], []),
    ],
)
def test_gso_runs_keep_order_and_the_kernels_limits(
    datagrams: list[tuple[bytes, Address]], runs: list[int]
) -> None:
    got = gso_runs(datagrams, IPV4_UDP_MAX)
    assert [len(run) for _, run in got] == runs
    assert [(d, addr) for addr, run in got for d in run] == datagrams
    for _, run in got:
        assert all(len(d) == len(run[0]) for d in run[:-1]) and len(run[-1]) <= len(run[0])


def test_a_coalesced_buffer_is_split_with_its_short_last_datagram() -> None:
    parts = [b"a" * 1440, b"b" * 1440, b"c" * 1440, b"d" * 17]
    got = split_coalesced(b"".join(parts), 1440)
    assert [bytes(p) for p in got] == parts
    assert [bytes(p) for p in split_coalesced(b"x" * 2880, 1440)] == [b"x" * 1440] * 2


class FakeSocket:
    """A stdlib-socket stand-in recording what the transport hands the kernel. sendmsg
    with UDP_SEGMENT is cut into datagrams as the kernel cuts it; recvmsg returns
    ``to_receive`` entries ``(buffer, gso_size or 0)``."""

    family = socket.AF_INET

    def __init__(self, gso_error: int | None = None, block_after: int | None = None) -> None:
        self.wire: list[tuple[bytes, Address]] = []
        self.calls: list[str] = []
        self.gso_error = gso_error
        self.block_after = block_after  # datagrams accepted before the buffer is full
        self.to_receive: list[tuple[bytes, int]] = []

    def setblocking(self, flag: bool) -> None:
        pass

    def setsockopt(self, *args: Any) -> None:
        pass

    def getsockopt(self, level: int, option: int) -> int:
        return 1 << 20

    def _room(self, n: int) -> None:
        if self.block_after is not None and len(self.wire) + n > self.block_after:
            raise BlockingIOError(errno.EAGAIN, "full")

    def sendto(self, data: bytes, address: Address) -> int:
        self._room(1)
        self.calls.append("sendto")
        self.wire.append((bytes(data), address))
        return len(data)

    def sendmsg(
        self, buffers: list[bytes], ancdata: list[tuple[int, int, bytes]], flags: int, addr: Address
    ) -> int:
        ((level, kind, cdata),) = ancdata
        assert (level, kind) == (SOL_UDP, UDP_SEGMENT)
        if self.gso_error is not None:
            raise OSError(self.gso_error, "refused")
        size = struct.unpack("=H", cdata)[0]
        blob = b"".join(buffers)
        parts = [blob[i : i + size] for i in range(0, len(blob), size)]
        self._room(len(parts))
        self.calls.append("sendmsg")
        self.wire += [(p, addr) for p in parts]
        return len(blob)

    def recvfrom(self, bufsize: int) -> tuple[bytes, Address]:
        raise BlockingIOError(errno.EAGAIN, "empty")

    def recvmsg(self, bufsize: int, ancbufsize: int) -> tuple[bytes, list[Any], int, Address]:
        if not self.to_receive:
            raise BlockingIOError(errno.EAGAIN, "empty")
        data, size = self.to_receive.pop(0)
        anc = [(SOL_UDP, UDP_GRO, struct.pack("=i", size))] if size else []
        return data, anc, 0, A


def fake_transport(sock: FakeSocket, *, gso: bool, gro: bool) -> UdpTransport:
    t = UdpTransport(sock, gso=False, gro=False)  # type: ignore[arg-type]
    t.stats.gso, t.stats.gro = gso and LINUX, gro and LINUX
    return t


MIXED = sized([1440] * 5 + [300], A) + sized([1440, 1440], B) + sized([52] * 3, A, 7)


@pytest.mark.skipif(not LINUX, reason="UDP GSO is Linux only")
def test_gso_and_plain_sends_put_the_same_datagrams_on_the_wire_in_fewer_calls() -> None:
    plain, batched = FakeSocket(), FakeSocket()
    assert fake_transport(plain, gso=False, gro=False).send_batch(MIXED) == len(MIXED)
    t = fake_transport(batched, gso=True, gro=False)
    assert t.send_batch(MIXED) == len(MIXED)
    assert batched.wire == plain.wire == [(d, a) for d, a in MIXED]
    assert plain.calls == ["sendto"] * len(MIXED)
    assert batched.calls == ["sendmsg"] * 3
    assert (t.stats.send_calls, t.stats.datagrams_sent, t.stats.gso_sends) == (3, 11, 3)
    assert t.stats.send_calls_saved == 8


@pytest.mark.skipif(not LINUX, reason="UDP GSO is Linux only")
def test_a_full_socket_buffer_stops_a_batch_at_a_run_boundary() -> None:
    sock = FakeSocket(block_after=7)
    t = fake_transport(sock, gso=True, gro=False)
    sent = t.send_batch(MIXED)
    assert sent == 6  # the first run (6 datagrams) went; the next would not fit
    sock.block_after = None
    assert t.send_batch(MIXED[sent:]) == len(MIXED) - sent
    assert sock.wire == [(d, a) for d, a in MIXED]


@pytest.mark.skipif(not LINUX, reason="UDP GSO is Linux only")
def test_gso_refused_by_the_device_falls_back_for_good_and_loses_nothing() -> None:
    sock = FakeSocket(gso_error=errno.EIO)
    t = fake_transport(sock, gso=True, gro=False)
    assert t.send_batch(MIXED) == len(MIXED)
    assert sock.wire == [(d, a) for d, a in MIXED]
    assert not t.stats.gso
    assert sock.calls == ["sendto"] * len(MIXED)


@pytest.mark.skipif(not LINUX, reason="UDP GRO is Linux only")
def test_recv_batch_splits_a_gro_buffer_into_its_datagrams() -> None:
    sock = FakeSocket()
    parts = [bytes([i]) * 1440 for i in range(3)] + [b"z" * 99]
    sock.to_receive = [(b"".join(parts), 1440), (b"single", 0), (b"q" * 1440, 1440)]
    t = fake_transport(sock, gso=False, gro=True)
    got = t.recv_batch(256)
    assert [bytes(d) for d, _ in got] == [*parts, b"single", b"q" * 1440]
    assert all(addr == A for _, addr in got)
    s = t.stats
    assert (s.recv_calls, s.datagrams_received, s.gro_buffers, s.recv_calls_saved) == (3, 6, 1, 3)


# ----------------------------------------------------------------- real sockets


def offload_of(ep: Endpoint) -> tuple[bool, bool]:
    stats = ep.statistics().transport
    assert stats is not None
    return stats.gso, stats.gro


@pytest.mark.skipif(not LINUX, reason="UDP GSO/GRO are Linux only")
@pytest.mark.parametrize("offload", ["gso,gro", "none"])
@pytest.mark.parametrize("mss", [None, 1452])
async def test_bulk_bytes_are_intact_with_and_without_gso_gro(
    monkeypatch: pytest.MonkeyPatch, offload: str, mss: int | None
) -> None:
    monkeypatch.setenv(OFFLOAD_ENV, offload)
    up = random.Random(1).randbytes(3_000_000)
    down = random.Random(2).randbytes(500_000)
    config = Config(mss=mss)
    got: dict[str, str] = {}
    server_ep = await utcp.open_endpoint(("127.0.0.1", 0), config=config)
    client_ep = await utcp.open_endpoint(("127.0.0.1", 0), config=config)
    try:
        listener = await utcp.listen_on(server_ep)

        async def serve() -> None:
            stream = await listener.accept()
            h = hashlib.sha256()
            while chunk := await stream.receive_some():
                h.update(chunk)
            got["up"] = h.hexdigest()
            await stream.send_all(down)
            await stream.aclose()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                stream = await utcp.connect_on(client_ep, server_ep.getsockname())
                await stream.send_all(up)
                await stream.send_eof()
                h = hashlib.sha256()
                while chunk := await stream.receive_some():
                    h.update(chunk)
                got["down"] = h.hexdigest()
                mss_seen = stream.statistics().mss
                await stream.aclose()
        client_stats = client_ep.statistics().transport
        server_stats = server_ep.statistics().transport
        expected = (True, True) if offload != "none" else (False, False)
        assert offload_of(client_ep) == offload_of(server_ep) == expected
    finally:
        await client_ep.aclose()
        await server_ep.aclose()
    assert got == {"up": hashlib.sha256(up).hexdigest(), "down": hashlib.sha256(down).hexdigest()}
    # WIRE.md "Sizes": the loopback route's MTU (65536) allows the largest UDP payload,
    # 65507 - 20 bytes of TCP header; less 12 for timestamps in every segment.
    assert mss_seen == (65487 if mss is None else mss) - 12
    assert client_stats is not None and server_stats is not None
    if offload == "none":
        assert client_stats.send_calls_saved == server_stats.recv_calls_saved == 0
    elif mss == 1452:
        # Runs of full segments leave in one call and arrive as one buffer.
        assert client_stats.gso_sends > 0 and client_stats.send_calls_saved > 0
        assert server_stats.gro_buffers > 0 and server_stats.recv_calls_saved > 0


@pytest.mark.skipif(not LINUX, reason="UDP GSO/GRO are Linux only")
@pytest.mark.parametrize("gro", [True, False])
async def test_a_kernel_gso_send_arrives_as_the_same_datagrams(gro: bool) -> None:
    receiver = UdpTransport.bind(("127.0.0.1", 0), gro=gro)
    sender = UdpTransport.bind(("127.0.0.1", 0), gso=True)
    try:
        assert sender.stats.gso and receiver.stats.gro is gro
        dest = receiver.getsockname()
        datagrams = [(bytes([i]) * 1200, dest) for i in range(10)] + [(b"end", dest)]
        assert sender.send_batch(datagrams) == len(datagrams)
        assert sender.stats.gso_sends == 1
        got: list[bytes] = []
        with trio.fail_after(5):
            while len(got) < len(datagrams):
                await receiver.wait_readable()
                got += [bytes(d) for d, _ in receiver.recv_batch(256)]
        assert got == [d for d, _ in datagrams]
        assert (receiver.stats.gro_buffers == 1) is gro
    finally:
        sender.close()
        receiver.close()


@pytest.mark.skipif(not LINUX, reason="IP_MTU is Linux only")
async def test_path_mss_follows_the_route_mtu_on_loopback() -> None:
    t4 = UdpTransport.bind(("127.0.0.1", 0))
    t6 = UdpTransport.bind(("::1", 0))
    try:
        # 65536 - 20 - 8 - 20 = 65488, capped at what one UDP datagram carries, 65507 - 20.
        assert t4.path_mss(("127.0.0.1", 9)) == 65487
        # 65536 - 40 (IPv6) - 8 - 20.
        assert t6.path_mss(("::1", 9)) == 65468
        assert t4.stats.rcvbuf > 0 and t4.stats.sndbuf > 0
    finally:
        t4.close()
        t6.close()


NETNS_PROBE = """
import sys
from utcp._transport import UdpTransport
t = UdpTransport.bind(("0.0.0.0", 0))
print(",".join(str(t.path_mss((f"198.18.{n}.2", 9))) for n in (1, 2, 3)))
"""


@pytest.mark.skipif(
    not LINUX or shutil.which("ip") is None or not hasattr(socket, "if_nameindex"),
    reason="needs Linux and iproute2",
)
def test_path_mss_of_real_mtus_1500_9000_1280() -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace")
    ns = f"utcp-mss-{uuid.uuid4().hex[:8]}"
    run = ["ip", "-n", ns]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run([*run, "link", "set", "lo", "up"], check=True)
        for n, mtu in ((1, 1500), (2, 9000), (3, 1280)):
            dev, peer = f"d{n}", f"p{n}"
            subprocess.run([*run, "link", "add", dev, "type", "veth", "peer", peer], check=True)
            for name in (dev, peer):
                subprocess.run([*run, "link", "set", name, "mtu", str(mtu), "up"], check=True)
            subprocess.run([*run, "addr", "add", f"198.18.{n}.1/24", "dev", dev], check=True)
        done = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", NETNS_PROBE],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=os.getcwd(),
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    # A real path (MTU 1500) keeps the classic 1452; jumbo frames and IPv6's minimum MTU
    # give what their MTU allows.
    assert done.stdout.strip() == "1452,8952,1232"


# ----------------------------------------------------------------- simulated network


def batch_like_the_kernel(host: Host) -> list[int]:
    """Make ``host`` send and receive through the GSO/GRO transforms: its output leaves in
    ``gso_runs``, each cut back into datagrams as the kernel cuts a GSO send; its input
    arrives as views of coalesced buffers split as a GRO receive is. Returns the sizes of
    the runs, as they are formed."""
    runs: list[int] = []
    send, receive = host.datagrams_to_send, host.receive_datagrams

    def regroup(datagrams: Sequence[tuple[bytes, Address]]) -> list[tuple[memoryview, Address]]:
        out: list[tuple[memoryview, Address]] = []
        for addr, run in gso_runs(datagrams, IPV4_UDP_MAX):
            runs.append(len(run))
            out += [(view, addr) for view in split_coalesced(b"".join(run), len(run[0]))]
        return out

    def datagrams_to_send(now: float) -> list[tuple[bytes, Address]]:
        return [(bytes(view), addr) for view, addr in regroup(send(now))]

    def receive_datagrams(batch: Sequence[tuple[bytes, Address]], now: float) -> None:
        receive(regroup(batch), now)

    host.datagrams_to_send = datagrams_to_send  # type: ignore[method-assign]
    host.receive_datagrams = receive_datagrams  # type: ignore[method-assign,assignment]
    return runs


def segment_stream(pair: HostPair) -> list[tuple[float, Address, int, int, int, int]]:
    out = []
    for rec in pair.net.trace_records:
        if rec.fate == "sent":
            seg = decode_untrusted(rec.data)
            out.append((rec.time, rec.src, seg.seq, seg.ack, seg.flags, len(seg.payload)))
    return out


@pytest.mark.parametrize("loss", [0.0, 0.02])
def test_batching_leaves_the_segment_streams_unchanged_on_the_simulated_network(
    loss: float,
) -> None:
    up = random.Random(3).randbytes(600_000)
    down = random.Random(4).randbytes(200_000)
    link = LinkConfig(delay=0.01, loss=loss, rate=50e6)
    results = []
    for batching in (False, True):
        pair = HostPair(seed=11, link=link, trace=True)
        runs = [batch_like_the_kernel(h) for h in (pair.client, pair.server)] if batching else []
        result = pair.transfer(up, down)
        assert result.intact
        results.append((segment_stream(pair), result.elapsed))
        if batching:
            assert max(max(r) for r in runs) > 1  # runs of several datagrams were formed
    (plain, plain_time), (batched, batched_time) = results
    assert batched == plain
    assert batched_time == plain_time


async def test_writes_fill_segments_of_a_large_mss_despite_notsent_lowat() -> None:
    # TCP_NOTSENT_LOWAT (16 KiB on a stream, as trio sets it) bounds the unsent queue, not
    # the segment size: with the loopback's ~64 KiB MSS one write still fills a segment.
    data = random.Random(5).randbytes(1_000_000)
    server_ep = await utcp.open_endpoint(("127.0.0.1", 0))
    client_ep = await utcp.open_endpoint(("127.0.0.1", 0))
    try:
        listener = await utcp.listen_on(server_ep)
        received = bytearray()

        async def serve() -> None:
            stream = await listener.accept()
            while chunk := await stream.receive_some():
                received.extend(chunk)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                stream = await utcp.connect_on(client_ep, server_ep.getsockname())
                mss = stream.statistics().mss
                await stream.send_all(data)
                await stream.aclose()
                sent = stream.statistics().segments_sent
    finally:
        await client_ep.aclose()
        await server_ep.aclose()
    assert received == data
    assert mss > 60_000
    # 16 full segments and the rest; 16 KiB segments would take 62 or more.
    assert sent < 2 * len(data) // mss + 6


class ThrottledSimTransport(SimTransport):
    """A simulated socket whose buffer takes at most three datagrams per call: a flush
    stops part-way, as on a full socket buffer, and the endpoint must go on in order."""

    def send_batch(self, datagrams: Sequence[tuple[bytes, Address]]) -> int:
        taken = datagrams[:3]
        for data, address in taken:
            self.send(data, address)
        return len(taken)


async def test_a_flush_cut_short_by_the_socket_goes_on_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = TrioNetwork(seed=5, link=LinkConfig(delay=0.005))
    endpoints = []
    for addr in (A, B):
        transport = ThrottledSimTransport(net, addr)
        net.net.attach(addr, transport)
        endpoints.append(Endpoint(transport, config=Config(nodelay=True)))
    client_ep, server_ep = endpoints
    data = random.Random(6).randbytes(500_000)
    try:
        listener = await utcp.listen_on(server_ep)
        received = bytearray()

        async def serve() -> None:
            stream = await listener.accept()
            while chunk := await stream.receive_some():
                received.extend(chunk)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                stream = await utcp.connect_on(client_ep, B)
                await stream.send_all(data)
                await stream.aclose()
        assert client_ep.statistics().send_blocked > 0
        assert client_ep.statistics().transport is None  # a simulated socket keeps none
    finally:
        await client_ep.aclose()
        await server_ep.aclose()
        net.close()
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    assert stream.statistics().retransmits == 0  # nothing lost or reordered on the way
