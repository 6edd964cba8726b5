"""utcp against the Linux kernel's own TCP, through a TUN device in a private namespace.

Each test gets a fresh network namespace with a TUN device (utcp.testing._tun); a gateway
task in this process turns utcp's datagrams into IPv4 packets on the TUN and back, so the
kernel sees an ordinary TCP peer at 198.18.0.2. The kernel's side is a small Python program
run with ``ip netns exec``. Both directions move 10 MB at once, hashed at both ends, then
both sides send FIN and read to end of file. The negotiated options are checked on three
witnesses: utcp's connection, the kernel's TCP_INFO and the SYNs seen by the gateway.

Needs root, /dev/net/tun and ``ip netns``; skipped otherwise.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio

import utcp
from utcp import State, UtcpStream
from utcp._config import DEFAULT_MSS_IPV4
from utcp._endpoint import Endpoint
from utcp.testing._tun import (
    NetnsProcess,
    NetnsTun,
    TunGateway,
    TunUnavailable,
    create_netns_tun,
)

pytestmark = pytest.mark.root

NBYTES = 10 * 1024 * 1024
UTCP_SEED = 1
KERNEL_SEED = 2
TUN_MTU = 1500
KERNEL_MSS = TUN_MTU - 40  # what Linux advertises for a 1500-byte MTU (IPv4 + TCP headers)
CLIENT_MAXSEG = 1200  # the kernel client's TCP_MAXSEG: its SYN offers less than utcp's 1452
TS_OPTION_LEN = 12  # NOP NOP + the 10-byte timestamps option (RFC 7323 appendix A)
TEST_TIMEOUT = 25.0
CLOSE_TIMEOUT = 5.0

# linux/tcp.h: tcpi_options bits and the tcpi_state of a socket whose FINs are both done.
TCPI_OPT_TIMESTAMPS = 1
TCPI_OPT_SACK = 2
TCPI_OPT_WSCALE = 4
TCP_CLOSE = 7

# The kernel's side: connect or accept once, send NBYTES of seeded data and SHUT_WR while
# reading to end of file, wait (bounded) until both FINs are acknowledged, then print one
# JSON line: hashes, how reading ended, SO_ERROR and the socket's TCP_INFO.
KERNEL_PEER = r"""
import hashlib, json, random, signal, socket, struct, sys, threading, time

signal.alarm(60)  # a watchdog: this process never outlives a stuck test for long
mode, host, port, nbytes, seed, maxseg = sys.argv[1:7]
port, nbytes, seed, maxseg = int(port), int(nbytes), int(seed), int(maxseg)
data = random.Random(seed).randbytes(nbytes)

def counters():
    # The namespace's own TCP counters (/proc/net is per network namespace).
    out = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        with open(path) as f:
            lines = f.read().splitlines()
        for names, values in zip(lines[::2], lines[1::2]):
            group, _, names = names.partition(": ")
            if group in ("Tcp", "TcpExt"):
                out.update(zip(names.split(), map(int, values.split(": ")[1].split())))
    return out

def tcp_info(s):
    raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    f = struct.unpack("<8B24I", raw)
    return {
        "state": f[0], "options": f[5], "snd_wscale": f[6] & 0x0F, "rcv_wscale": f[6] >> 4,
        "snd_mss": f[10], "rcv_mss": f[11], "unacked": f[12], "pmtu": f[21],
        "advmss": f[27], "total_retrans": f[31],
    }

if mode == "server":
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(1)
    print("READY", ls.getsockname()[1], flush=True)
    ls.settimeout(20)
    s, _ = ls.accept()
    ls.close()
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if maxseg:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, maxseg)
    s.settimeout(20)
    s.connect((host, port))
    print("READY", s.getsockname()[1], flush=True)
s.settimeout(20)
result = {"established_info": tcp_info(s)}

def sender():
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        result["sent"] = len(data)
    except OSError as exc:
        result["send_error"] = repr(exc)

thread = threading.Thread(target=sender)
thread.start()
digest = hashlib.sha256()
received = 0
try:
    while True:
        chunk = s.recv(1 << 16)
        if not chunk:
            result["eof"] = True
            break
        digest.update(chunk)
        received += len(chunk)
except OSError as exc:
    result["recv_error"] = repr(exc)
thread.join(20)
deadline = time.monotonic() + 5
info = tcp_info(s)
while (info["state"] != 7 or info["unacked"]) and time.monotonic() < deadline:
    time.sleep(0.005)
    info = tcp_info(s)
result.update(
    received=received,
    received_sha256=digest.hexdigest(),
    sent_sha256=hashlib.sha256(data).hexdigest(),
    so_error=s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR),
    final_info=info,
    counters=counters(),
)
print(json.dumps(result), flush=True)
s.close()
"""


@dataclass
class Payloads:
    from_utcp: bytes
    from_kernel_sha256: str


@pytest.fixture
def tun() -> Iterator[NetnsTun]:
    try:
        device = create_netns_tun(mtu=TUN_MTU)
    except TunUnavailable as exc:
        pytest.skip(f"kernel interop needs a TUN device in a network namespace: {exc}")
    try:
        yield device
    finally:
        device.close()


@pytest.fixture(scope="module")
def payloads() -> Payloads:
    kernel_data = random.Random(KERNEL_SEED).randbytes(NBYTES)
    return Payloads(
        from_utcp=random.Random(UTCP_SEED).randbytes(NBYTES),
        from_kernel_sha256=hashlib.sha256(kernel_data).hexdigest(),
    )


async def start_kernel_peer(
    tun: NetnsTun, mode: str, host: str, port: int, *, maxseg: int = 0
) -> tuple[NetnsProcess, int]:
    """Start the kernel-side program; returns it and the port it reported once ready."""
    argv = [sys.executable, "-I", "-c", KERNEL_PEER, mode, host, str(port)]
    argv += [str(NBYTES), str(KERNEL_SEED), str(maxseg)]
    peer = await NetnsProcess.start(tun.netns, argv)
    try:
        with trio.fail_after(10):
            line = await peer.read_line()
        word, _, number = line.partition(" ")
        if word != "READY":
            with trio.move_on_after(5):
                await peer.wait()
            raise AssertionError(f"kernel peer did not start: {line!r}\n{peer.stderr_text()}")
    except BaseException:
        await peer.aclose()
        raise
    return peer, int(number)


async def kernel_result(peer: NetnsProcess) -> dict[str, Any]:
    """The kernel program's report, once it has exited."""
    with trio.fail_after(15):
        text = await peer.read_rest()
        code = await peer.wait()
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert code == 0 and lines, f"kernel peer exited {code}: {text!r}\n{peer.stderr_text()}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


async def exchange(stream: UtcpStream, data: bytes) -> tuple[int, str]:
    """Send ``data`` then FIN while reading to end of file; (bytes read, their sha256)."""
    digest = hashlib.sha256()
    received = 0

    async def send_then_eof() -> None:
        await stream.send_all(data)
        await stream.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_then_eof)
        for _ in range(NBYTES + 2):  # every read but the last returns at least one byte
            chunk = await stream.receive_some()
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
        else:
            raise AssertionError(f"no end of file after {received} bytes")
    return received, digest.hexdigest()


async def wait_closed(stream: UtcpStream) -> None:
    """Until our FIN is acknowledged too: TIME-WAIT (we closed first) or CLOSED."""
    step = 0.005
    with trio.fail_after(CLOSE_TIMEOUT):
        for _ in range(int(CLOSE_TIMEOUT / step)):
            if stream.conn.state in (State.TIME_WAIT, State.CLOSED):
                return
            await trio.sleep(step)
    raise AssertionError(f"our FIN was never acknowledged: {stream.conn.state}")


def check_interop(
    stream: UtcpStream,
    gateway: TunGateway,
    kernel: dict[str, Any],
    utcp_received: tuple[int, str],
    payloads: Payloads,
    *,
    kernel_mss: int,
) -> None:
    conn = stream.conn
    stats = stream.statistics()
    to_kernel, to_utcp = gateway.stats.to_kernel, gateway.stats.to_utcp
    info = kernel["final_info"]
    counters = kernel["counters"]

    # The data, both ways, intact.
    assert utcp_received == (NBYTES, payloads.from_kernel_sha256)
    assert kernel.get("sent") == NBYTES, kernel
    assert kernel["sent_sha256"] == payloads.from_kernel_sha256
    assert kernel["received"] == NBYTES
    assert kernel["received_sha256"] == hashlib.sha256(payloads.from_utcp).hexdigest()

    # The options the kernel's SYN offered, and what utcp made of them.
    assert len(to_utcp.syns) >= 1, "the gateway saw no SYN from the kernel"
    kernel_syn = to_utcp.syns[0]
    assert kernel_syn.mss == kernel_mss, kernel_syn.describe()
    assert kernel_syn.wscale is not None, kernel_syn.describe()
    assert kernel_syn.sack_permitted, kernel_syn.describe()
    assert kernel_syn.timestamps is not None, kernel_syn.describe()
    assert conn.sack_ok, "SACK not negotiated although both SYNs offered it"
    assert conn.ts_ok, "timestamps not negotiated although both SYNs offered them"
    assert conn.snd_wscale == kernel_syn.wscale
    assert conn.peer_mss == kernel_mss
    # WIRE.md "Sizes": utcp announces what the route toward its UDP peer (the gateway, over
    # loopback) allows; the kernel's 1500-byte TUN route makes the smaller MSS the one used.
    assert conn.remote_address is not None
    local_mss = stream.endpoint.transport.path_mss(conn.remote_address) or DEFAULT_MSS_IPV4
    assert conn.local_mss == local_mss > kernel_mss
    effective = min(local_mss, kernel_mss) - TS_OPTION_LEN
    assert conn.effective_mss == stats.mss == effective

    # The same from the kernel's TCP_INFO.
    for bit, name in (
        (TCPI_OPT_TIMESTAMPS, "timestamps"),
        (TCPI_OPT_SACK, "SACK"),
        (TCPI_OPT_WSCALE, "window scale"),
    ):
        assert info["options"] & bit, f"the kernel did not negotiate {name}: {info}"
    assert info["snd_wscale"] == conn.rcv_wscale  # the shift utcp offered
    assert info["rcv_wscale"] == conn.snd_wscale  # the shift the kernel offered
    assert info["snd_mss"] == effective
    assert info["rcv_mss"] == effective  # the kernel's estimate of utcp's segment size

    # Every segment honours min(both MSS) less the timestamps option, and carries timestamps.
    assert 0 < to_kernel.max_payload <= effective
    assert 0 < to_utcp.max_payload <= effective
    assert to_kernel.missing_timestamps == 0
    assert to_utcp.missing_timestamps == 0

    # Nothing corrupt, malformed or refused on either side of the gateway.
    assert to_kernel.bad_checksums == to_kernel.undecodable == 0
    assert to_utcp.bad_checksums == to_utcp.undecodable == 0
    assert stats.checksum_drops == stats.malformed_drops == 0
    for name in ("InErrs", "InCsumErrors", "PAWSEstab", "PAWSActive", "TCPACKSkippedPAWS"):
        assert counters.get(name, 0) == 0, f"kernel counter {name}: {counters}"

    # A clean close: a FIN each way, no RST anywhere, both ends done.
    assert to_kernel.fins >= 1 and to_utcp.fins >= 1
    assert to_kernel.resets == 0, f"utcp sent RST: {to_kernel.rst_segments}"
    assert to_utcp.resets == 0, f"the kernel sent RST: {to_utcp.rst_segments}"
    assert conn.error is None and conn.stats.resets_sent == 0
    assert conn.state in (State.TIME_WAIT, State.CLOSED)
    assert kernel.get("eof") is True, f"the kernel did not read to end of file: {kernel}"
    assert "recv_error" not in kernel and "send_error" not in kernel, kernel
    assert kernel["so_error"] == 0
    assert counters.get("OutRsts", 0) == 0
    assert info["state"] == TCP_CLOSE and info["unacked"] == 0, info


async def run_gateway(gateway: TunGateway, task_status: trio.TaskStatus[None]) -> None:
    task_status.started()
    await gateway.run()


async def test_utcp_client_to_kernel_server(tun: NetnsTun, payloads: Payloads) -> None:
    endpoint: Endpoint = await utcp.open_endpoint(("127.0.0.1", 0))
    gateway = TunGateway(tun, endpoint.local_address)
    peer: NetnsProcess | None = None
    try:
        with trio.fail_after(TEST_TIMEOUT):
            async with trio.open_nursery() as nursery:
                await nursery.start(run_gateway, gateway)
                peer, port = await start_kernel_peer(tun, "server", tun.kernel_address, 0)
                stream = await utcp.connect_on(endpoint, gateway.address, remote_port=port)
                received = await exchange(stream, payloads.from_utcp)
                await wait_closed(stream)
                kernel = await kernel_result(peer)
                nursery.cancel_scope.cancel()
        check_interop(stream, gateway, kernel, received, payloads, kernel_mss=KERNEL_MSS)
    finally:
        if peer is not None:
            await peer.aclose()
        await endpoint.aclose()
        gateway.close()


async def test_kernel_client_to_utcp_listener(tun: NetnsTun, payloads: Payloads) -> None:
    endpoint: Endpoint = await utcp.open_endpoint(("127.0.0.1", 0))
    gateway = TunGateway(tun, endpoint.local_address)
    listener = await utcp.listen_on(endpoint)
    peer: NetnsProcess | None = None
    try:
        with trio.fail_after(TEST_TIMEOUT):
            async with trio.open_nursery() as nursery:
                await nursery.start(run_gateway, gateway)
                # The kernel client clamps its MSS below utcp's: utcp must send less.
                peer, _ = await start_kernel_peer(
                    tun, "client", tun.virtual_address, listener.port, maxseg=CLIENT_MAXSEG
                )
                stream = await listener.accept()
                await listener.aclose()
                received = await exchange(stream, payloads.from_utcp)
                await wait_closed(stream)
                kernel = await kernel_result(peer)
                nursery.cancel_scope.cancel()
        check_interop(stream, gateway, kernel, received, payloads, kernel_mss=CLIENT_MAXSEG)
    finally:
        if peer is not None:
            await peer.aclose()
        await listener.aclose()
        await endpoint.aclose()
        gateway.close()
