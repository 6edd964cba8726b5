"""TCP Fast Open (RFC 7413) against the Linux kernel, through the TUN gateway of the kernel
interop tests. ``net.ipv4.tcp_fastopen`` is set to 3 (client and server) inside the
throwaway namespace only. Each test makes two connections: the first fetches a cookie, the
second carries its request in the SYN, and the receiving side proves the data came with the
SYN (the kernel's TCPFastOpenPassive / TCPFastOpenActive counters, utcp's statistics and the
SYNs the gateway saw).

Needs root, /dev/net/tun and ``ip netns``; skipped otherwise.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import trio
from test_kernel_interop import kernel_result, run_gateway

import utcp
from utcp import Config, UtcpStream
from utcp._fastopen import COOKIE_LEN, shared_cache
from utcp.testing._tun import NetnsProcess, NetnsTun, TunGateway, TunUnavailable, create_netns_tun

pytestmark = pytest.mark.root

TEST_TIMEOUT = 25.0
ANSWER = b"answer:"

# The kernel's side: serve or make ``count`` connections; the client's first one uses
# TCP_FASTOPEN_CONNECT, later ones sendto(MSG_FASTOPEN). One JSON line at the end: what each
# connection carried, and the namespace's TcpExt counters.
KERNEL_TFO = r"""
import json, signal, socket, struct, sys

signal.alarm(60)
mode, host, port, count = sys.argv[1:5]
port, count = int(port), int(count)
TCP_FASTOPEN_CONNECT = 30
MSG_FASTOPEN = 0x20000000
TCPI_OPT_SYN_DATA = 32

def counters():
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    out = {}
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            out.update(zip(names.split()[1:], map(int, values.split()[1:])))
    return {k: v for k, v in out.items() if "FastOpen" in k}

def syn_data(s):
    raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return bool(struct.unpack("<8B24I", raw)[5] & TCPI_OPT_SYN_DATA)

def read_all(s):
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    return got

results = []
if mode == "server":
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
    ls.listen(8)
    print("READY", ls.getsockname()[1], flush=True)
    ls.settimeout(20)
    for _ in range(count):
        s, _ = ls.accept()
        s.settimeout(20)
        request = s.recv(65536)
        s.sendall(b"answer:" + request)
        s.shutdown(socket.SHUT_WR)
        read_all(s)
        results.append({"request": request.decode(), "syn_data": syn_data(s)})
        s.close()
else:
    print("READY 0", flush=True)
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(20)
        request = f"request {i} from the kernel".encode()
        if i == 0:
            s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
            s.connect((host, port))
            s.sendall(request)
        else:
            s.sendto(request, MSG_FASTOPEN, (host, port))
        # No shutdown(SHUT_WR) here: in SYN-SENT Linux would close the socket instead.
        answer = read_all(s)
        results.append({"answer": answer.decode(), "syn_data": syn_data(s)})
        s.close()
print(json.dumps({"results": results, "counters": counters()}), flush=True)
"""


@pytest.fixture
def tun() -> Iterator[NetnsTun]:
    try:
        device = create_netns_tun(prefix="utcp-tfo")
    except TunUnavailable as exc:
        pytest.skip(f"Fast Open interop needs a TUN device in a network namespace: {exc}")
    try:
        # Inside the throwaway namespace only: bit 1 client, bit 2 server (Linux ip-sysctl).
        subprocess.run(
            ["ip", "netns", "exec", device.netns, "sysctl", "-qw", "net.ipv4.tcp_fastopen=3"],
            check=True,
            capture_output=True,
            timeout=10,
        )
        yield device
    finally:
        device.close()


@pytest.fixture(autouse=True)
def fresh_cookie_cache() -> Iterator[None]:
    shared_cache().clear()
    yield
    shared_cache().clear()


async def start_kernel(tun: NetnsTun, mode: str, host: str, port: int) -> tuple[NetnsProcess, int]:
    argv = [sys.executable, "-I", "-c", KERNEL_TFO, mode, host, str(port), "2"]
    peer = await NetnsProcess.start(tun.netns, argv)
    try:
        with trio.fail_after(10):
            line = await peer.read_line()
        word, _, number = line.partition(" ")
        assert word == "READY", f"{line!r}\n{peer.stderr_text()}"
    except BaseException:
        await peer.aclose()
        raise
    return peer, int(number)


async def read_all(stream: UtcpStream) -> bytes:
    got = b""
    while chunk := await stream.receive_some():
        got += chunk
    return got


async def test_utcp_client_sends_syn_data_to_kernel_server(tun: NetnsTun) -> None:
    endpoint = await utcp.open_endpoint(("127.0.0.1", 0), config=Config(fastopen_connect=True))
    gateway = TunGateway(tun, endpoint.local_address)
    peer: NetnsProcess | None = None
    requests = [b"first request from utcp", b"second request, in the SYN"]
    streams: list[UtcpStream] = []
    try:
        with trio.fail_after(TEST_TIMEOUT):
            async with trio.open_nursery() as nursery:
                await nursery.start(run_gateway, gateway)
                peer, port = await start_kernel(tun, "server", tun.kernel_address, 0)
                for request in requests:
                    stream = await utcp.connect_on(endpoint, gateway.address, remote_port=port)
                    await stream.send_all(request)
                    await stream.send_eof()
                    assert await read_all(stream) == ANSWER + request
                    await stream.aclose()
                    streams.append(stream)
                kernel = await kernel_result(peer)
                nursery.cancel_scope.cancel()
        # The kernel: a cookie asked for, then a SYN whose data it took (TCPFastOpenPassive).
        assert [r["request"] for r in kernel["results"]] == [r.decode() for r in requests]
        assert kernel["counters"]["TCPFastOpenCookieReqd"] == 1, kernel
        assert kernel["counters"]["TCPFastOpenPassive"] == 1, kernel
        assert kernel["counters"]["TCPFastOpenPassiveFail"] == 0, kernel
        assert [r["syn_data"] for r in kernel["results"]] == [False, True], kernel
        first, second = gateway.stats.to_kernel.syns
        assert (first.fastopen_cookie, bytes(first.payload)) == (b"", b"")
        assert second.fastopen_cookie is not None and len(second.fastopen_cookie) == 8
        assert bytes(second.payload) == requests[1]
        stats = streams[1].statistics().fastopen
        assert stats["syn_data_sent"] == stats["syn_data_acked"] == 1
        assert stats["fallbacks"] == 0
    finally:
        if peer is not None:
            await peer.aclose()
        await endpoint.aclose()
        gateway.close()


async def test_kernel_client_sends_syn_data_to_utcp_listener(tun: NetnsTun) -> None:
    endpoint = await utcp.open_endpoint(("127.0.0.1", 0), config=Config(fastopen_queue=8))
    gateway = TunGateway(tun, endpoint.local_address)
    listener = await utcp.listen_on(endpoint)
    peer: NetnsProcess | None = None
    accepted: list[tuple[bytes, dict[str, int], str]] = []
    try:
        with trio.fail_after(TEST_TIMEOUT):
            async with trio.open_nursery() as nursery:
                await nursery.start(run_gateway, gateway)
                peer, _ = await start_kernel(tun, "client", tun.virtual_address, listener.port)
                for _ in range(2):
                    stream = await listener.accept()
                    state = str(stream.conn.state)
                    request = await stream.receive_some()
                    await stream.send_all(ANSWER + request)
                    await stream.aclose()
                    accepted.append((request, stream.statistics().fastopen, state))
                kernel = await kernel_result(peer)
                nursery.cancel_scope.cancel()
        requests = [f"request {i} from the kernel".encode() for i in range(2)]
        assert [a[0] for a in accepted] == requests
        assert [r["answer"] for r in kernel["results"]] == [(ANSWER + r).decode() for r in requests]
        # The kernel: its SYN-data was acknowledged (TCPFastOpenActive) on the second one.
        assert kernel["counters"]["TCPFastOpenActive"] == 1, kernel
        assert kernel["counters"]["TCPFastOpenActiveFail"] == 0, kernel
        assert [r["syn_data"] for r in kernel["results"]] == [False, True], kernel
        # utcp: a cookie for the first, the second's data taken from its SYN and handed
        # to accept before the handshake ended.
        first, second = gateway.stats.to_utcp.syns
        assert (first.fastopen_cookie, bytes(first.payload)) == (b"", b"")
        assert bytes(second.payload) == requests[1]
        assert second.fastopen_cookie is not None and len(second.fastopen_cookie) == COOKIE_LEN
        assert accepted[0][1]["cookies_sent"] == 1 and accepted[0][1]["accepted"] == 0
        assert accepted[1][1]["accepted"] == 1 and accepted[1][2] == "SYN-RECEIVED"
    finally:
        if peer is not None:
            await peer.aclose()
        await listener.aclose()
        await endpoint.aclose()
        gateway.close()
