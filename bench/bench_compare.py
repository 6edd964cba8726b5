"""How utcp compares: utcp, kernel TCP and raw UDP (via bench_loopback.py) beside QUIC
(aioquic) and KCP (pip ``kcp``), measured in one run with the same method, on 127.0.0.1.

Per system and round: bulk goodput of ``--bulk-mb`` MB one way (from the client's first
write until the server confirmed the byte count) and the p50/p99 round trip of
``--echo-count`` 64-byte ping-pongs on one connection. As in bench_loopback.py, each server
is its own process started once and killed by PID at the end, and every measurement runs in
a fresh client process. Each round runs ``bench_loopback.py --rounds 1 --systems ...`` as a
subprocess (its JSON lines are read back), then aioquic, then KCP, so drifting machine load
hits all of them alike; the table shows medians over rounds.

  * quic: aioquic (asyncio), one connection, one bidirectional stream, TLS 1.3 with a
    self-signed certificate made at run time (the client verifies it), aioquic's default
    configuration otherwise (reno, 1200-byte datagrams, 1 MB flow-control windows).
  * kcp:  the ``kcp`` package's KCP control block driven from trio over one UDP socket, fast
    mode ``nodelay=1, interval=10 ms, resend=2, nc=1`` (no congestion control), windows
    1024/1024 segments, MTU 1400, message mode; ``flush()`` after every send and every batch
    of input so neither data nor ACKs wait for the 10 ms tick.

Output (stdout): one JSON line per measurement (bench_loopback's, tagged with
``"source": "bench_loopback"``, and this script's own), a summary JSON line, then a
markdown table. Progress goes to stderr.

    python bench/bench_compare.py --quick     # 5 MB, 200 echoes, 1 round
    python bench/bench_compare.py             # 50 MB, 2000 echoes, 3 rounds

Exit status: 0 if every measurement completed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import json
import os
import platform
import random
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

import bench_loopback as loopback

from bench.common import read_line, stop_process

HOST = loopback.HOST
MB = loopback.MB
ECHO_SIZE = loopback.ECHO_SIZE
CHUNK = loopback.CHUNK
LOOPBACK_SYSTEMS = loopback.SYSTEMS
OWN_SYSTEMS = ("quic", "kcp")
TESTS = loopback.TESTS
SERVER_MAX_LIFETIME = loopback.SERVER_MAX_LIFETIME
ALPN = "utcp-bench"

# KCP settings (the common "turbo" mode) and how the bench drives it.
KCP_NODELAY, KCP_INTERVAL_MS, KCP_RESEND, KCP_NC = True, 10, 2, True
KCP_WINDOW = 1024  # segments, send and receive (kcptun's default)
KCP_MTU = 1400
KCP_MESSAGE = 16 * (KCP_MTU - 24)  # bytes per enqueue: 16 segments, well under the fragment cap
KCP_IDLE_PEER = 30.0  # the KCP server forgets a peer silent this long

Json = dict[str, Any]


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# ================================================================= QUIC (aioquic)


def make_certificate() -> tuple[bytes, bytes]:
    """A self-signed certificate for ``localhost`` / 127.0.0.1 and its key, both PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


async def quic_serve_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The same protocol as bench_loopback's ``serve_stream``: ``B`` counts until EOF and
    answers with the count, ``E`` echoes until EOF."""
    first = await reader.read(CHUNK)
    if not first:
        return
    mode, rest = first[:1], first[1:]
    if mode == b"B":
        total = len(rest)
        while data := await reader.read(CHUNK):
            total += len(data)
        writer.write(struct.pack("!Q", total))
        writer.write_eof()
    elif mode == b"E":
        if rest:
            writer.write(rest)
        while data := await reader.read(CHUNK):
            writer.write(data)
        writer.write_eof()


async def quic_server_main() -> None:
    from aioquic.asyncio.server import serve
    from aioquic.quic.configuration import QuicConfiguration

    cert_pem, key_pem = make_certificate()
    config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    with tempfile.TemporaryDirectory(prefix="utcp-bench-quic-") as tmp:
        cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        config.load_cert_chain(cert_file, key_file)
    tasks: set[asyncio.Task[None]] = set()

    def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(quic_serve_stream(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await serve(HOST, 0, configuration=config, stream_handler=on_stream)
    transport = server._transport  # aioquic has no public accessor for the bound port
    assert transport is not None
    port = transport.get_extra_info("sockname")[1]
    loopback.emit({"port": port, "pid": os.getpid(), "cert_pem": cert_pem.decode()})

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def stdin_readable() -> None:
        if not os.read(sys.stdin.fileno(), 4096):
            stop.set()

    loop.add_reader(sys.stdin.fileno(), stdin_readable)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), SERVER_MAX_LIFETIME)
    loop.remove_reader(sys.stdin.fileno())
    server.close()


async def quic_client(args: argparse.Namespace) -> Json:
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name="localhost")
    config.load_verify_locations(cadata=args.cert_pem.encode())
    config.verify_mode = ssl.CERT_REQUIRED
    # Not aioquic.asyncio.connect(): it binds its socket to "::" (every interface); this one
    # binds to 127.0.0.1 like every other socket of the bench.
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(
        lambda: QuicConnectionProtocol(QuicConnection(configuration=config)),
        local_addr=(HOST, 0),
    )
    try:
        client.connect((HOST, args.port))
        await client.wait_connected()
        return await quic_measure(args, client)
    finally:
        client.close()
        await client.wait_closed()
        transport.close()


async def quic_measure(args: argparse.Namespace, client: Any) -> Json:
    reader, writer = await client.create_stream()
    if args.test == "bulk":
        payload = bytes(CHUNK)
        cpu0, t0 = time.process_time(), time.perf_counter()
        writer.write(b"B")
        remaining = args.bulk_bytes
        while remaining:
            n = min(CHUNK, remaining)
            writer.write(payload[:n])
            await writer.drain()
            remaining -= n
        writer.write_eof()
        (received,) = struct.unpack("!Q", await reader.readexactly(8))
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        if received != args.bulk_bytes:
            raise RuntimeError(f"server counted {received} bytes, sent {args.bulk_bytes}")
        return {
            "bytes": received,
            "seconds": seconds,
            "MB_s": received / seconds / MB,
            "client_cpu_s": cpu,
        }
    warmup = echo_warmup(args.echo_count)
    rtts: list[int] = []
    writer.write(b"E")
    cpu0 = time.process_time()
    for i in range(warmup + args.echo_count):
        msg = i.to_bytes(8, "big") * (ECHO_SIZE // 8)
        t0 = time.perf_counter_ns()
        writer.write(msg)
        echoed = await reader.readexactly(ECHO_SIZE)
        t1 = time.perf_counter_ns()
        if echoed != msg:
            raise RuntimeError(f"echo #{i} came back different")
        if i >= warmup:
            rtts.append(t1 - t0)
    cpu = time.process_time() - cpu0
    writer.write_eof()
    record = loopback.latency_record(rtts, warmup)
    record["client_cpu_s"] = cpu
    return record


# ================================================================= KCP


class KcpPeer:
    """One KCP control block and the datagrams it wants sent."""

    __slots__ = ("addr", "conv", "kcp", "last_heard", "outbox")

    def __init__(self, conv: int, addr: tuple[str, int]) -> None:
        from kcp.extension import KCP

        self.addr = addr
        self.conv = conv
        self.outbox: list[bytes] = []
        self.last_heard = time.monotonic()
        self.kcp = KCP(
            conv,
            max_transmission=KCP_MTU,
            no_delay=KCP_NODELAY,
            update_interval=KCP_INTERVAL_MS,
            resend_count=KCP_RESEND,
            no_congestion_control=KCP_NC,
            send_window_size=KCP_WINDOW,
            receive_window_size=KCP_WINDOW,
        )
        self.kcp.include_outbound_handler(lambda _kcp, data: self.outbox.append(data))
        self.kcp.update()  # ikcp_flush does nothing before the first ikcp_update


class KcpSocket:
    """A non-blocking UDP socket that trio waits on; sends are drained without awaiting
    unless the kernel buffer is full."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, loopback.SOCKET_BUFFER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, loopback.SOCKET_BUFFER)

    async def send_out(self, peer: KcpPeer) -> None:
        for data in peer.outbox:
            while True:
                try:
                    self.sock.sendto(data, peer.addr)
                    break
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self.sock)
        peer.outbox.clear()

    async def receive(self, wait_ms: int) -> list[tuple[bytes, tuple[str, int]]]:
        """Every datagram waiting, after waiting up to ``wait_ms`` for the first."""
        got: list[tuple[bytes, tuple[str, int]]] = []
        if wait_ms > 0:
            with trio.move_on_after(wait_ms / 1000):
                await trio.lowlevel.wait_readable(self.sock)
        else:
            await trio.lowlevel.checkpoint()
        for _ in range(4096):
            try:
                got.append(self.sock.recvfrom(65536))
            except BlockingIOError:
                break
        return got


def kcp_feed(peer: KcpPeer, data: bytes) -> None:
    from kcp.exceptions import KCPException

    try:
        peer.kcp.receive(data)
    except KCPException:
        return  # a stray datagram of another conversation
    peer.last_heard = time.monotonic()


async def kcp_pump(ksock: KcpSocket, peer: KcpPeer) -> list[bytearray]:
    """Wait for input or the next KCP tick, feed what came, tick, flush, send; return the
    messages now complete."""
    batch = await ksock.receive(min(max(peer.kcp.update_check(), 0), KCP_INTERVAL_MS))
    for data, addr in batch:
        if addr == peer.addr:
            kcp_feed(peer, data)
    peer.kcp.update()
    if batch:
        peer.kcp.flush()
    await ksock.send_out(peer)
    return list(peer.kcp.get_all_received())


async def kcp_send(ksock: KcpSocket, peer: KcpPeer, message: bytes) -> None:
    peer.kcp.enqueue(message)
    peer.kcp.flush()
    await ksock.send_out(peer)


class KcpServerSession:
    """What the server does with one peer's messages (bench_loopback's protocol, with the
    bulk size announced up front since KCP has no half-close)."""

    __slots__ = ("expected", "mode", "peer", "total")

    def __init__(self, peer: KcpPeer) -> None:
        self.peer = peer
        self.mode = b""
        self.expected = 0
        self.total = 0

    def handle(self, message: bytearray) -> None:
        if not self.mode:
            self.mode = bytes(message[:1])
            if self.mode == b"B":
                (self.expected,) = struct.unpack("!Q", message[1:9])
            return
        if self.mode == b"E":
            self.peer.kcp.enqueue(bytes(message))
            return
        self.total += len(message)
        if self.total >= self.expected:
            self.peer.kcp.enqueue(struct.pack("!Q", self.total))


async def kcp_server_main(args: argparse.Namespace) -> None:
    ksock = KcpSocket()
    ksock.sock.bind((HOST, 0))
    loopback.emit({"port": ksock.sock.getsockname()[1], "pid": os.getpid()})
    sessions: dict[tuple[str, int], KcpServerSession] = {}
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                fd = sys.stdin.fileno()
                while True:
                    await trio.lowlevel.wait_readable(fd)
                    if not os.read(fd, 4096):
                        nursery.cancel_scope.cancel()
                        return

            async def watch_signals() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
            nursery.start_soon(watch_signals)
            nursery.cancel_scope.deadline = trio.current_time() + SERVER_MAX_LIFETIME
            while True:
                wait = min(
                    (max(s.peer.kcp.update_check(), 0) for s in sessions.values()),
                    default=KCP_INTERVAL_MS,
                )
                batch = await ksock.receive(min(wait, KCP_INTERVAL_MS))
                touched: set[tuple[str, int]] = set()
                for data, addr in batch:
                    if len(data) < 4:
                        continue
                    conv = int.from_bytes(data[:4], "little")
                    session = sessions.get(addr)
                    if session is None or session.peer.conv != conv:
                        session = sessions[addr] = KcpServerSession(KcpPeer(conv, addr))
                    kcp_feed(session.peer, data)
                    touched.add(addr)
                now = time.monotonic()
                for addr, session in list(sessions.items()):
                    if now - session.peer.last_heard > KCP_IDLE_PEER:
                        del sessions[addr]
                        continue
                    peer = session.peer
                    for message in peer.kcp.get_all_received():
                        session.handle(message)
                    peer.kcp.update()
                    if addr in touched:
                        peer.kcp.flush()
                    await ksock.send_out(peer)


async def kcp_client(args: argparse.Namespace) -> Json:
    ksock = KcpSocket()
    ksock.sock.bind((HOST, 0))
    peer = KcpPeer(random.getrandbits(31) or 1, (HOST, args.port))
    with ksock.sock:
        if args.test == "bulk":
            nbytes = args.bulk_bytes
            full = bytes(KCP_MESSAGE)
            cpu0, t0 = time.process_time(), time.perf_counter()
            await kcp_send(ksock, peer, b"B" + struct.pack("!Q", nbytes))
            remaining = nbytes
            reply: bytearray | None = None
            while reply is None:
                while remaining and peer.kcp.get_outbound_packets() < 2 * KCP_WINDOW:
                    n = min(KCP_MESSAGE, remaining)
                    peer.kcp.enqueue(full if n == KCP_MESSAGE else bytes(n))
                    remaining -= n
                peer.kcp.flush()
                await ksock.send_out(peer)
                for message in await kcp_pump(ksock, peer):
                    reply = message
            seconds = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            (received,) = struct.unpack("!Q", reply)
            if received != nbytes:
                raise RuntimeError(f"server counted {received} bytes, sent {nbytes}")
            return {
                "bytes": received,
                "seconds": seconds,
                "MB_s": received / seconds / MB,
                "client_cpu_s": cpu,
            }
        warmup = echo_warmup(args.echo_count)
        rtts: list[int] = []
        await kcp_send(ksock, peer, b"E")
        cpu0 = time.process_time()
        for i in range(warmup + args.echo_count):
            msg = i.to_bytes(8, "big") * (ECHO_SIZE // 8)
            t0 = time.perf_counter_ns()
            await kcp_send(ksock, peer, msg)
            echoed = b""
            while not echoed:
                for message in await kcp_pump(ksock, peer):
                    echoed = bytes(message)
            t1 = time.perf_counter_ns()
            if echoed != msg:
                raise RuntimeError(f"echo #{i} came back different")
            if i >= warmup:
                rtts.append(t1 - t0)
        cpu = time.process_time() - cpu0
        record = loopback.latency_record(rtts, warmup)
        record["client_cpu_s"] = cpu
        return record


def echo_warmup(count: int) -> int:
    """The same warm-up rule as bench_loopback's client."""
    return min(100, max(10, count // 10))


# ================================================================= client and server roles


def run_client_role(args: argparse.Namespace) -> int:
    try:
        if args.system == "quic":
            record = asyncio.run(asyncio.wait_for(quic_client(args), args.timeout))
        else:

            async def bounded() -> Json:
                with trio.fail_after(args.timeout):
                    return await kcp_client(args)

            record = trio.run(bounded)
    except (asyncio.TimeoutError, trio.TooSlowError):
        record = {"error": f"timed out after {args.timeout} s"}
    except Exception as exc:
        record = {"error": repr(exc)}
    loopback.emit(record)
    return 1 if "error" in record else 0


class Server:
    """One ``--role server`` subprocess of this script; ``stop()`` ends it by PID."""

    def __init__(self, system: str) -> None:
        cmd = [sys.executable, __file__, "--role", "server", "--system", system]
        self.system = system
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        stdout = self.proc.stdout
        assert stdout is not None
        hello = read_line(stdout, 30.0)
        if not hello.strip():
            self.stop()
            raise RuntimeError(f"{system} server (pid {self.pid}) did not report its port")
        info = json.loads(hello)
        self.port = int(info["port"])
        self.cert_pem: str | None = info.get("cert_pem")

    def stop(self) -> None:
        stop_process(self.proc)


def run_client(server: Server, test: str, args: argparse.Namespace) -> Json:
    cmd = [sys.executable, __file__, "--role", "client", "--system", server.system]
    cmd += ["--port", str(server.port), "--test", test, "--timeout", str(args.timeout)]
    cmd += ["--bulk-bytes", str(args.bulk_bytes), "--echo-count", str(args.echo_count)]
    if server.cert_pem:
        cmd += ["--cert-pem", server.cert_pem]
    server_cpu0 = loopback.cpu_seconds(server.pid)
    try:
        done = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=args.timeout + 30,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"client process killed after {args.timeout + 30} s"}
    server_cpu1 = loopback.cpu_seconds(server.pid)
    lines = done.stdout.strip().splitlines()
    try:
        record: Json = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        record = {"error": f"client exited {done.returncode}: {done.stderr.strip()[-2000:]}"}
    if server_cpu0 is not None and server_cpu1 is not None:
        record["server_cpu_s"] = round(server_cpu1 - server_cpu0, 3)
    return record


def run_loopback_round(args: argparse.Namespace) -> list[Json]:
    """One round of bench_loopback.py as a subprocess; its measurement lines (or one error
    record per missing measurement)."""
    cmd = [sys.executable, loopback.__file__, "--rounds", "1", "--systems", *args.loopback]
    cmd += ["--bulk-mb", str(args.bulk_bytes / MB), "--echo-count", str(args.echo_count)]
    cmd += ["--timeout", str(args.timeout)]
    limit = 2 * len(args.loopback) * (args.timeout + 30) + 60
    try:
        done = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=limit
        )
        lines = done.stdout.splitlines()
    except subprocess.TimeoutExpired:
        lines = []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("kind") == "measurement":
            record.pop("conditions", None)
            record.pop("round", None)
            records.append(record)
    seen = {(r["system"], r["test"]) for r in records}
    for system in args.loopback:
        for test in TESTS:
            if (system, test) not in seen:
                records.append(
                    {"system": system, "test": test, "error": "bench_loopback gave no result"}
                )
    return records


# ================================================================= orchestrator


def conditions(args: argparse.Namespace) -> Json:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "kernel": platform.release(),
        "cpu_count": os.cpu_count(),
        "packages": {
            name: package_version(name)
            for name in ("trio-utcp", "trio", "aioquic", "kcp", "cryptography")
        },
        "utcp_tree": loopback.git_describe(),
        "bulk_bytes": args.bulk_bytes,
        "echo_count": args.echo_count,
        "rounds": args.rounds,
        "quic": "aioquic defaults: reno, max_datagram_size 1200, 1 MB flow-control windows",
        "kcp": {
            "nodelay": int(KCP_NODELAY),
            "interval_ms": KCP_INTERVAL_MS,
            "resend": KCP_RESEND,
            "nc": int(KCP_NC),
            "sndwnd": KCP_WINDOW,
            "rcvwnd": KCP_WINDOW,
            "mtu": KCP_MTU,
            "flush": "after every send and every input batch",
        },
        "loadavg_at_start": list(os.getloadavg()),
    }


def available(system: str) -> str | None:
    """None if ``system``'s package is importable, else why it is skipped."""
    module = {"quic": "aioquic", "kcp": "kcp"}[system]
    if package_version(module) is None:
        return f"{module} is not installed (pip install 'trio-utcp[compare]')"
    return None


def table(medians: Json, order: list[str]) -> str:
    base = medians.get("utcp", {})

    def fmt(value: float | None, digits: int) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    def rel(value: float | None, ref: float | None) -> str:
        return "n/a" if value is None or not ref else f"{value / ref:.2f}x"

    rows = [
        "| system | bulk MB/s | echo p50 us | echo p99 us | bulk / utcp | p50 / utcp |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for system in order:
        m = medians[system]
        rows.append(
            f"| {system} | {fmt(m['bulk_MB_s'], 1)} | {fmt(m['echo_p50_us'], 0)} "
            f"| {fmt(m['echo_p99_us'], 0)} | {rel(m['bulk_MB_s'], base.get('bulk_MB_s'))} "
            f"| {rel(m['echo_p50_us'], base.get('echo_p50_us'))} |"
        )
    return "\n".join(rows)


def orchestrate(args: argparse.Namespace) -> int:
    cond = conditions(args)
    own = []
    skipped: dict[str, str] = {}
    for system in args.others:
        reason = available(system)
        if reason is None:
            own.append(system)
        else:
            skipped[system] = reason
            print(f"skipping {system}: {reason}", file=sys.stderr)
    order = [*args.loopback, *own]
    results: dict[tuple[str, str], list[Json]] = {(s, t): [] for s in order for t in TESTS}
    failures = 0

    def record_one(rnd: int, record: Json) -> None:
        nonlocal failures
        record = {"kind": "measurement", "round": rnd, **record}
        results[(record["system"], record["test"])].append(record)
        failures += "error" in record
        loopback.emit(record)
        print(
            f"round {rnd} {record['system']} {record['test']}: {loopback.describe(record)}",
            file=sys.stderr,
        )

    servers: dict[str, Server] = {}
    try:
        for system in own:
            servers[system] = Server(system)
            print(f"{system} server: pid {servers[system].pid}", file=sys.stderr)
        for rnd in range(1, args.rounds + 1):
            if args.loopback:
                for record in run_loopback_round(args):
                    record_one(rnd, {**record, "source": "bench_loopback"})
            for system in own:
                for test in TESTS:
                    record = run_client(servers[system], test, args)
                    record_one(rnd, {"system": system, "test": test, **record})
    finally:
        for server in servers.values():
            server.stop()

    medians: Json = {}
    for system in order:
        bulk, echo = results[(system, "bulk")], results[(system, "echo")]
        medians[system] = {
            "bulk_MB_s": loopback.median_of(bulk, "MB_s"),
            "echo_p50_us": loopback.median_of(echo, "p50_us"),
            "echo_p99_us": loopback.median_of(echo, "p99_us"),
            "rounds_ok": [sum("error" not in r for r in bulk), sum("error" not in r for r in echo)],
        }
    base = medians.get("utcp", {})
    ratios = {
        system: {
            "bulk_over_utcp": loopback.ratio(m["bulk_MB_s"], base.get("bulk_MB_s")),
            "echo_p50_over_utcp": loopback.ratio(m["echo_p50_us"], base.get("echo_p50_us")),
            "echo_p99_over_utcp": loopback.ratio(m["echo_p99_us"], base.get("echo_p99_us")),
        }
        for system, m in medians.items()
    }
    loopback.emit(
        {
            "kind": "summary",
            "median": medians,
            "ratios_to_utcp": ratios,
            "skipped": skipped,
            "failures": failures,
            "conditions": {**cond, "loadavg_at_end": list(os.getloadavg())},
        }
    )
    print()
    print(table(medians, order))
    for system, reason in skipped.items():
        print(f"\n{system}: not measured, {reason}")
    return 1 if failures else 0


# ================================================================= command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="See the module docstring for details."
    )
    parser.add_argument("--quick", action="store_true", help="5 MB, 200 echoes, 1 round")
    parser.add_argument("--bulk-mb", type=float, default=50.0, help="MB per bulk run (10**6 B)")
    parser.add_argument("--echo-count", type=int, default=2000, help="round trips per echo run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported")
    parser.add_argument(
        "--loopback",
        nargs="*",
        choices=LOOPBACK_SYSTEMS,
        default=list(LOOPBACK_SYSTEMS),
        help="systems measured through bench_loopback.py (utcp should be one: ratios use it)",
    )
    parser.add_argument(
        "--others", nargs="*", choices=OWN_SYSTEMS, default=list(OWN_SYSTEMS), help="QUIC, KCP"
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per measurement")
    # Internal: how the orchestrator starts its subprocesses.
    parser.add_argument(
        "--role", choices=("bench", "server", "client"), default="bench", help=argparse.SUPPRESS
    )
    parser.add_argument("--system", choices=OWN_SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--test", choices=TESTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--bulk-bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cert-pem", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.bulk_mb, args.echo_count, args.rounds = 5.0, 200, 1
    if args.bulk_bytes is None:
        args.bulk_bytes = int(args.bulk_mb * MB)
    if args.bulk_bytes < 1 or args.echo_count < 1 or args.rounds < 1 or args.timeout <= 0:
        parser.error("--bulk-mb, --echo-count, --rounds and --timeout must be positive")
    if args.role != "bench" and args.system is None:
        parser.error(f"--role {args.role} needs --system")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "server":
        if args.system == "quic":
            asyncio.run(quic_server_main())
        else:
            trio.run(kcp_server_main, args)
        return 0
    if args.role == "client":
        return run_client_role(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
