"""Failing like kernel TCP over real sockets: fast, clear, and with the right error.

On 127.0.0.1: a closed port refuses the connect at once (the ICMP port unreachable reaches
the connection through the error queue); a peer process killed with SIGKILL is detected by
the port unreachables its host answers with, mid-upload within seconds and mid-download by
the default keep-alives. In a network namespace this test creates (and always deletes),
addresses with no route or an unreachable route fail the connect with their errno after the
documented grace. Timing asserts are generous upper bounds.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import pathlib
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import trio
import trio.testing

import utcp
from utcp import Config
from utcp._errors import ORIGIN_ICMP, KernelError
from utcp._kernel_errors import SYN_SOFT_ERROR_GRACE
from utcp._transport import IP_RECVERR, UdpTransport, _parse_queued_error

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLONE_NEWNET = 0x40000000  # linux/sched.h
_netns_counter = itertools.count()

# Documented default detection times (README "Dead peers and timeouts").
DEFAULTS = Config()
KEEPALIVE_DETECTION = (
    DEFAULTS.keepalive_idle + DEFAULTS.keepalive_count * DEFAULTS.keepalive_interval
)

# The peer process: listens on 127.0.0.1, prints its port, accepts one connection and then
# either reads everything ("sink") or sends without end ("source"), until it is killed.
PEER = r"""
import signal, sys, trio, utcp
signal.alarm(120)  # a watchdog: never outlives a stuck test for long
async def main() -> None:
    (listener,) = await utcp.open_tcp_listeners(0, host="127.0.0.1")
    print("PORT", listener.getsockname()[1], flush=True)
    stream = await listener.accept()
    if sys.argv[1] == "sink":
        while await stream.receive_some():
            pass
    else:
        chunk = b"x" * 65536
        while True:
            await stream.send_all(chunk)
trio.run(main)
"""


class PeerProcess:
    """The peer as a subprocess of ours, killed by its PID."""

    def __init__(self, mode: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PEER, mode],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )

    async def port(self) -> int:
        assert self.proc.stdout is not None
        with trio.fail_after(30):
            line = await trio.to_thread.run_sync(self.proc.stdout.readline)
        word, port = line.split()
        assert word == "PORT", line
        return int(port)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def sink() -> Iterator[PeerProcess]:
    peer = PeerProcess("sink")
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture
def source() -> Iterator[PeerProcess]:
    peer = PeerProcess("source")
    try:
        yield peer
    finally:
        peer.close()


def closed_udp_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ipv6_available() -> bool:
    try:
        closed_udp_port("::1")
    except OSError:
        return False
    return True


# ------------------------------------------------------------------ refused, unreachable


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        pytest.param("::1", marks=pytest.mark.skipif(not ipv6_available(), reason="no ::1")),
    ],
)
async def test_connect_to_a_closed_port_is_refused_within_a_second(host: str) -> None:
    # No UDP socket on the port: the kernel answers the SYN with an ICMP (or ICMPv6) port
    # unreachable (RFC 1122 4.2.3.9: a hard error), which fails the connect at once.
    port = closed_udp_port(host)
    start = trio.current_time()
    with pytest.raises(ConnectionRefusedError) as info:
        await utcp.open_tcp_stream(host, port)
    assert trio.current_time() - start <= 1.0
    assert info.value.errno == errno.ECONNREFUSED


async def test_refused_connect_on_a_shared_endpoint_leaves_it_healthy() -> None:
    async with await utcp.open_endpoint(("127.0.0.1", 0)) as endpoint:
        with pytest.raises(ConnectionRefusedError):
            await utcp.connect_on(endpoint, ("127.0.0.1", closed_udp_port()))
        assert endpoint.host.stats.kernel_errors >= 1
        assert not endpoint.host.connections
        (listener,) = await utcp.open_tcp_listeners(0, host="127.0.0.1")
        async with listener:
            port = listener.getsockname()[1]
            async with await utcp.open_tcp_stream("127.0.0.1", port, endpoint=endpoint) as c:
                server = await listener.accept()
                await c.send_all(b"still works")
                assert await server.receive_some() == b"still works"
                await server.aclose()


async def test_open_tcp_stream_raises_a_failing_attempts_error_unwrapped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not a connection failure (here a bug inside an attempt): raised as itself, never
    # inside an ExceptionGroup from the Happy Eyeballs nursery.
    async def broken(*args: object, **kwargs: object) -> utcp.UtcpStream:
        raise RuntimeError("bug inside an attempt")

    monkeypatch.setattr("utcp._api.connect_on", broken)
    with pytest.raises(RuntimeError, match="bug inside an attempt"):
        await utcp.open_tcp_stream("127.0.0.1", closed_udp_port())


class Netns:
    """A network namespace of our own, deleted by ``close``; only its loopback is up."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            pytest.skip("needs root (network namespaces)")
        if shutil.which("ip") is None:
            pytest.skip("the iproute2 'ip' command is missing")
        self.name = f"utcp-f-{os.getpid()}-{next(_netns_counter)}"
        done = subprocess.run(["ip", "netns", "add", self.name], capture_output=True, timeout=10)
        if done.returncode != 0:
            pytest.skip(f"ip netns add failed: {done.stderr.decode().strip()}")
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, timeout=10)

    def udp_socket(self) -> socket.socket:
        """A UDP socket created inside the namespace, bound to its wildcard address."""
        made: list[socket.socket] = []
        failed: list[BaseException] = []

        def in_thread() -> None:
            # setns(2) moves only this thread, which exits right after.
            libc = ctypes.CDLL(None, use_errno=True)
            try:
                with open(f"/run/netns/{self.name}", "rb") as target:
                    if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind(("0.0.0.0", 0))
                made.append(sock)
            except BaseException as exc:
                failed.append(exc)

        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join(10)
        if failed:
            raise failed[0]
        return made[0]

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[Netns]:
    ns = Netns()
    try:
        yield ns
    finally:
        ns.close()


@pytest.mark.root
@pytest.mark.parametrize(
    ("address", "code"),
    [
        ("198.18.7.7", errno.ENETUNREACH),  # no route at all
        ("198.19.7.7", errno.EHOSTUNREACH),  # an "unreachable" route
        ("198.19.200.7", errno.EACCES),  # a "prohibit" route (administratively prohibited)
    ],
)
async def test_connect_to_an_unroutable_address_fails_with_its_errno_after_the_grace(
    netns: Netns, address: str, code: int
) -> None:
    netns.ip("route", "add", "unreachable", "198.19.0.0/16")
    netns.ip("route", "add", "prohibit", "198.19.200.0/24")
    endpoint = utcp.Endpoint(UdpTransport(netns.udp_socket()))
    async with endpoint:
        start = trio.current_time()
        with pytest.raises(OSError) as info:
            await utcp.connect_on(endpoint, (address, 4433))
        elapsed = trio.current_time() - start
        assert info.value.errno == code
        assert not isinstance(info.value, TimeoutError)
        # RFC 5461: after the grace (SYNs at 0, 1 and 3 s), long before connect_timeout.
        assert SYN_SOFT_ERROR_GRACE - 0.1 <= elapsed < SYN_SOFT_ERROR_GRACE + 3.0


@pytest.mark.root
async def test_icmp_host_unreachable_from_a_router_fails_the_connect_after_the_grace() -> None:
    # Two namespaces joined by a veth pair: the client's only route leads to the router,
    # whose route to 198.19.0.0/16 is "unreachable": it answers each SYN with an ICMP host
    # unreachable, which reaches the connection through the socket's error queue.
    client, router = Netns(), None
    try:
        router = Netns()
        veth = f"uf{os.getpid() % 100000}"
        client.ip("link", "add", f"{veth}a", "type", "veth", "peer", "name", f"{veth}b")
        client.ip("link", "set", f"{veth}b", "netns", router.name)
        client.ip("addr", "add", "198.18.0.1/30", "dev", f"{veth}a")
        client.ip("link", "set", f"{veth}a", "up")
        client.ip("route", "add", "default", "via", "198.18.0.2")
        router.ip("addr", "add", "198.18.0.2/30", "dev", f"{veth}b")
        router.ip("link", "set", f"{veth}b", "up")
        router.ip("route", "add", "unreachable", "198.19.0.0/16")
        subprocess.run(
            ["ip", "netns", "exec", router.name, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
            check=True,
            timeout=10,
        )
        transport = UdpTransport(client.udp_socket())
        assert transport.error_queue
        async with utcp.Endpoint(transport) as endpoint:
            start = trio.current_time()
            with pytest.raises(OSError) as info:
                await utcp.connect_on(endpoint, ("198.19.7.7", 4433))
            elapsed = trio.current_time() - start
            assert info.value.errno == errno.EHOSTUNREACH
            assert SYN_SOFT_ERROR_GRACE - 0.1 <= elapsed < SYN_SOFT_ERROR_GRACE + 3.0
            assert transport.send_errors == 0  # every error came from the router's ICMP
            assert endpoint.host.stats.kernel_errors >= 3
    finally:
        client.close()
        if router is not None:
            router.close()


async def test_transport_reports_icmp_errors_and_loses_no_datagram_to_a_stale_one() -> None:
    # With IP_RECVERR, Linux fails the next sendto with the pending error of an earlier
    # ICMP message; the transport sends that datagram again and keeps the error's details
    # (destination, ICMP type and code, our quoted bytes) for recv_errors.
    transport = UdpTransport.bind(("127.0.0.1", 0))
    try:
        if not transport.error_queue:
            pytest.skip("no socket error queue on this platform")
        closed = ("127.0.0.1", closed_udp_port())
        assert transport.send(b"q" * 20, closed)
        await trio.sleep(0.05)  # the port unreachable comes back
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as live:
            live.bind(("127.0.0.1", 0))
            live.settimeout(5)
            assert transport.send(b"after the error", live.getsockname())
            assert live.recv(100) == b"after the error"
        (err,) = transport.recv_errors(10)
        assert err.destination == closed
        assert (err.errno, err.origin, err.icmp_type, err.icmp_code) == (
            errno.ECONNREFUSED,
            ORIGIN_ICMP,
            3,
            3,
        )
        assert err.quoted == b"q" * 20
        assert err.offender == "127.0.0.1"
        assert transport.recv_errors(10) == []
    finally:
        transport.close()


class _CountingSocket:
    """A socket that counts the error-queue reads made through it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.errqueue_reads = 0

    def recvmsg(self, *args: int) -> tuple[bytes, list[tuple[int, int, bytes]], int, object]:
        if len(args) == 3 and args[2] & socket.MSG_ERRQUEUE:
            self.errqueue_reads += 1
        return self._sock.recvmsg(*args)

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


async def test_error_queue_is_read_only_when_the_kernel_signals_an_error() -> None:
    # The error queue costs a system call to ask; Linux signals a queued ICMP error by the
    # socket's pending error (the next recvfrom or sendto fails with it) and by readability,
    # so a busy socket with no errors never asks, and an error is still delivered at once.
    transport = UdpTransport.bind(("127.0.0.1", 0))
    counting = _CountingSocket(transport._sock)
    transport._sock = counting  # type: ignore[assignment]
    try:
        if not transport.error_queue:
            pytest.skip("no socket error queue on this platform")
        assert transport.recv_errors(10) == []  # the first call drains: nothing there
        assert counting.errqueue_reads == 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            peer.settimeout(5)
            me = transport.getsockname()
            for i in range(50):
                peer.sendto(b"ping %d" % i, me)
                with trio.fail_after(5):
                    await transport.wait_readable()
                batch = transport.recv_batch(8)
                assert [bytes(data) for data, _ in batch] == [b"ping %d" % i]
                assert transport.recv_errors(10) == []
            assert counting.errqueue_reads == 1  # fifty datagrams, not one question more
            closed = ("127.0.0.1", closed_udp_port())
            assert transport.send(b"q" * 20, closed)
            await trio.sleep(0.05)  # the port unreachable comes back
            peer.sendto(b"after", me)
            await trio.sleep(0.05)
            batch = transport.recv_batch(8)  # reports the pending error, then the datagram
            assert [bytes(data) for data, _ in batch] == [b"after"]
            (err,) = transport.recv_errors(10)
            assert (err.destination, err.errno, err.quoted) == (
                closed,
                errno.ECONNREFUSED,
                b"q" * 20,
            )
            assert transport.recv_errors(10) == []
    finally:
        transport.close()


def test_error_queue_message_parses_into_a_kernel_error() -> None:
    # What recvmsg(MSG_ERRQUEUE) returns for an ICMP host unreachable (type 3, code 1) from
    # router 198.18.0.2: the quoted datagram, its destination, and a sock_extended_err
    # followed by the offender's sockaddr_in (linux/errqueue.h).
    if IP_RECVERR is None:
        pytest.skip("no IP_RECVERR on this platform")
    extended = struct.pack("=IBBBBII", errno.EHOSTUNREACH, ORIGIN_ICMP, 3, 1, 0, 0, 0)
    offender = struct.pack("=H", socket.AF_INET) + b"\0\0" + socket.inet_aton("198.18.0.2")
    ancdata = [(socket.IPPROTO_IP, IP_RECVERR, extended + offender + bytes(8))]
    quoted = bytes(range(20))
    err = _parse_queued_error(quoted, ancdata, ("198.19.7.7", 4433))
    assert err == KernelError(
        ("198.19.7.7", 4433), errno.EHOSTUNREACH, ORIGIN_ICMP, 3, 1, quoted, 0, "198.18.0.2"
    )
    assert _parse_queued_error(quoted, [], ("198.19.7.7", 4433)) is None


# ------------------------------------------------------------------ the peer process dies


async def test_peer_killed_mid_upload_breaks_send_all_within_ten_seconds(
    sink: PeerProcess,
) -> None:
    port = await sink.port()
    stream = await utcp.open_tcp_stream("127.0.0.1", port)
    sent = 0
    killed_at: list[float] = []
    chunk = b"u" * 65536

    async def upload() -> None:
        nonlocal sent
        while True:
            await stream.send_all(chunk)
            sent += len(chunk)
            if sent >= 4 << 20 and not killed_at:
                sink.kill()  # SIGKILL: its kernel now answers with port unreachables
                killed_at.append(trio.current_time())

    with trio.fail_after(60), pytest.raises(trio.BrokenResourceError) as info:
        await upload()
    assert killed_at, "the upload broke before the peer was killed"
    assert trio.current_time() - killed_at[0] < 10.0
    assert isinstance(info.value.__cause__, ConnectionResetError)
    assert "port unreachable" in str(info.value.__cause__)
    await stream.aclose()


async def test_peer_killed_mid_download_breaks_receive_some_by_the_default_keepalive(
    source: PeerProcess,
) -> None:
    # The defaults (keep-alive on, 20 s idle, 5 s apart, 3 probes): a receiver learns of a
    # dead peer from the port unreachables its probes draw, at the latest when the probes
    # go unanswered (KEEPALIVE_DETECTION, 35 s).
    port = await source.port()
    stream = await utcp.open_tcp_stream("127.0.0.1", port)
    received = 0
    with trio.fail_after(30):
        while received < 4 << 20:
            received += len(await stream.receive_some())
    source.kill()
    killed_at = trio.current_time()
    with trio.fail_after(KEEPALIVE_DETECTION + 20), pytest.raises(trio.BrokenResourceError) as info:
        while await stream.receive_some():
            pass
    assert trio.current_time() - killed_at < KEEPALIVE_DETECTION + 5
    assert isinstance(info.value.__cause__, (ConnectionResetError, TimeoutError))
    await stream.aclose()


# ------------------------------------------------------------------ endpoint and pcap


async def test_endpoint_is_an_async_context_manager_with_getsockname() -> None:
    async with await utcp.open_endpoint(("127.0.0.1", 0)) as endpoint:
        host, port = endpoint.getsockname()
        assert host == "127.0.0.1" and port > 0
        assert not endpoint.closed
    assert endpoint.closed


async def test_pcap_timestamps_are_wall_clock(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "trace.pcap"
    (listener,) = await utcp.open_tcp_listeners(0, host="127.0.0.1")
    async with listener:
        port = listener.getsockname()[1]
        async with await utcp.open_endpoint(("127.0.0.1", 0), pcap=path) as endpoint:
            client = await utcp.open_tcp_stream("127.0.0.1", port, endpoint=endpoint)
            server = await listener.accept()
            await client.send_all(b"timestamped")
            assert await server.receive_some() == b"timestamped"
            await client.aclose()
            await server.aclose()
    raw = path.read_bytes()
    stamps = []
    offset = 24  # the pcap global header
    while offset < len(raw):
        seconds, micros, incl, _orig = struct.unpack_from("<IIII", raw, offset)
        stamps.append(seconds + micros / 1e6)
        offset += 16 + incl
    assert len(stamps) >= 4  # SYN, SYN-ACK, ACK, data...
    now = time.time()
    assert all(abs(now - t) < 60 for t in stamps), (now, stamps)
    assert stamps == sorted(stamps)


# ------------------------------------------------------------------ defaults, virtual clock


async def test_default_keepalive_detects_a_silent_peer_within_35_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from utcp.testing import LinkConfig, TrioNetwork, sim_stream_pair

    net = TrioNetwork(seed=21, link=LinkConfig(delay=0.02))
    try:
        client, server = await sim_stream_pair(net)
        server_addr = server.endpoint.local_address
        net.net.add_filter(lambda now, src, dst, data: server_addr in (src, dst))
        start = trio.current_time()
        with pytest.raises(trio.BrokenResourceError) as info:
            await client.receive_some(1)
        assert isinstance(info.value.__cause__, TimeoutError)
        assert trio.current_time() - start == pytest.approx(KEEPALIVE_DETECTION, abs=0.5)
        await client.aclose()
        await server.aclose()
    finally:
        net.close()


async def test_default_user_timeout_fails_an_upload_to_a_vanished_peer_in_30_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from utcp.testing import LinkConfig, TrioNetwork, sim_stream_pair

    net = TrioNetwork(seed=22, link=LinkConfig(delay=0.02))
    try:
        client, server = await sim_stream_pair(net)
        server_addr = server.endpoint.local_address
        net.net.add_filter(lambda now, src, dst, data: server_addr in (src, dst))
        start = trio.current_time()
        with pytest.raises(trio.BrokenResourceError) as info:
            await client.send_all(b"u" * (4 << 20))
        assert isinstance(info.value.__cause__, TimeoutError)
        assert "user timeout" in str(info.value.__cause__)
        assert trio.current_time() - start == pytest.approx(DEFAULTS.user_timeout, abs=0.5)
        await client.aclose()
        await server.aclose()
    finally:
        net.close()


async def test_injected_port_unreachables_reset_a_simulated_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # utcp.testing's SimTransport takes injected kernel errors: here the port unreachables
    # a dead peer's host would send, answering the client's keep-alive probes.
    from utcp._wire import ACK, Segment, encode
    from utcp.testing import LinkConfig, SimTransport, TrioNetwork, sim_stream_pair

    net = TrioNetwork(seed=23, link=LinkConfig(delay=0.02))
    try:
        client, server = await sim_stream_pair(net)
        transport = client.endpoint.transport
        assert isinstance(transport, SimTransport)
        conn = client.conn
        assert conn.remote_address is not None
        quoted = encode(Segment(conn.local_port, conn.remote_port, conn.snd_nxt, 0, ACK, 0))
        dead = KernelError(conn.remote_address, errno.ECONNREFUSED, ORIGIN_ICMP, 3, 3, quoted)

        async def inject() -> None:
            for _ in range(3):
                transport.inject_error(dead)
                await trio.sleep(1.0)  # more than one RTO apart in all

        async with trio.open_nursery() as nursery:
            nursery.start_soon(inject)
            with pytest.raises(trio.BrokenResourceError) as info:
                await client.receive_some(1)
        assert isinstance(info.value.__cause__, ConnectionResetError)
        assert client.endpoint.host.stats.kernel_errors == 3
        await client.aclose()
        await server.aclose()
    finally:
        net.close()
