"""Loopback benchmark: utcp vs kernel TCP (both through trio) vs raw trio UDP, on 127.0.0.1.

For each system it measures
  * bulk: goodput of ``--bulk-mb`` MB (10**6 bytes) sent one way, and
  * echo: round-trip latency (p50/p99) of ``--echo-count`` 64-byte ping-pongs,
where the systems are
  * utcp:   ``utcp.open_tcp_stream`` / ``utcp.serve_tcp`` (TCP in user space over UDP),
  * kernel: ``trio.open_tcp_stream`` / ``trio.serve_tcp`` (the kernel's TCP),
  * udp:    ``trio.socket`` UDP: 1400-byte datagrams blasted one way, goodput counted at the
            receiver (what arrived / first-to-last arrival), and a 64-byte UDP ping-pong.
            This is the floor any UDP-based protocol written on trio pays.

Every server runs in its own process (``--role server``), started once and killed by PID
at the end; every measurement runs in a fresh client process (``--role client``), so client
and server never share an interpreter. Rounds alternate between the systems (utcp, kernel,
udp, utcp, ...) so drifting machine load hits all of them alike; the summary reports the
median over rounds. Output: one JSON line per measurement, then one summary JSON line with
the ratios utcp bulk / udp bulk and utcp echo p50 / kernel echo p50. Progress goes to stderr.

    python bench/bench_loopback.py --quick          # about 10 s: 5 MB, 200 echoes, 1 round
    python bench/bench_loopback.py                  # 50 MB, 2000 echoes, 3 rounds
    python bench/bench_loopback.py --systems utcp --profile-dir /tmp/prof   # cProfile dumps

Exit status: 0 if every measurement completed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import functools
import json
import math
import os
import platform
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import trio

# This tree first: its utcp, and the bench package the harness shares with this script.
# UTCP_BENCH_PATH puts another build of utcp before it (the compiled core that
# bench/build_compiled.py makes); the server processes inherit it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if os.environ.get("UTCP_BENCH_PATH"):
    sys.path.insert(0, os.path.abspath(os.environ["UTCP_BENCH_PATH"]))
import utcp
from bench.common import (
    CHUNK,
    UDP_DATA,
    UDP_FINISH,
    UDP_PING,
    UDP_REPORT,
    UDP_START,
    UDP_STARTED,
    Json,
    compiled_core,
    cpu_seconds,
    emit,
    git_describe,
    percentile,
    read_line,
    receive_exactly,
    serve_stream,
    serve_udp,
    stop_process,
    udp_request,
)

HOST = "127.0.0.1"  # the benchmark never talks to anything but the loopback interface
SYSTEMS = ("utcp", "kernel", "udp")
TESTS = ("bulk", "echo")
# Client-only tests the multi-core bench (bench_targets.py) runs against several servers.
EXTRA_TESTS = ("handshake",)
UDP_DATAGRAM = 1400  # bytes per datagram of the raw UDP bulk test (1 type byte + payload)
ECHO_SIZE = 64
MB = 10**6
SOCKET_BUFFER = 4 << 20  # what utcp's UdpTransport asks for; the raw UDP test does too
SERVER_MAX_LIFETIME = 3600.0  # a server left behind by accident exits on its own


# ================================================================= helpers


def parse_config_value(text: str) -> object:
    """``--utcp-set`` values: true/false, none, ints, floats, else the string itself."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def config_overrides(settings: list[str]) -> dict[str, object]:
    """``["pacing=false", "mss=1200"]`` -> ``{"pacing": False, "mss": 1200}``, checked
    against the fields of ``utcp.Config``."""
    names = {f.name for f in dataclasses.fields(utcp.Config)}
    changes: dict[str, object] = {}
    for item in settings:
        name, sep, value = item.partition("=")
        if not sep or name not in names:
            raise ValueError(f"--utcp-set wants FIELD=VALUE with a utcp.Config field: {item!r}")
        changes[name] = parse_config_value(value)
    return changes


def utcp_config(args: argparse.Namespace) -> utcp.Config:
    """The utcp config of both ends. By default Nagle is off, matching ``trio.SocketStream``,
    which sets TCP_NODELAY on every kernel TCP stream; ``--utcp-nagle`` turns it back on
    (``nagle_on``: a UtcpStream starts with TCP_NODELAY whatever the Config says).
    ``--utcp-set FIELD=VALUE`` overrides any other field."""
    changes: dict[str, object] = {} if args.utcp_nagle else {"nodelay": True}
    changes.update(config_overrides(args.utcp_set))
    return utcp.Config().replace(**changes)


def nagle_on(stream: trio.abc.HalfCloseableStream) -> None:
    """``--utcp-nagle``: clear TCP_NODELAY on a utcp stream."""
    if isinstance(stream, utcp.UtcpStream):
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)


@contextlib.contextmanager
def maybe_profile(path: str | None) -> Iterator[None]:
    """Run the body under cProfile and dump the stats to ``path`` (if given)."""
    if not path:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(path)


def cpu_now() -> float:
    """User + system CPU seconds of this process so far (``resource.getrusage``)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sys_now() -> float:
    """System (kernel) CPU seconds of this process so far: the part of ``cpu_now`` spent
    in system calls, which batching at the kernel boundary changes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def transport_stats(endpoints: list[utcp.Endpoint]) -> Json | None:
    """The kernel-boundary counters of utcp endpoints, summed (None if there are none)."""
    records = [s for ep in endpoints if (s := ep.statistics().transport) is not None]
    if not records:
        return None
    total: Json = {"gso": all(r.gso for r in records), "gro": all(r.gro for r in records)}
    counters = "send_calls datagrams_sent gso_sends recv_calls datagrams_received gro_buffers"
    for name in counters.split():
        total[name] = sum(getattr(r, name) for r in records)
    total["rcvbuf"], total["sndbuf"] = records[0].rcvbuf, records[0].sndbuf  # as granted
    return total


# ================================================================= servers


async def server_main(args: argparse.Namespace) -> None:
    """Bind, print ``{"port": N}`` on stdout, serve until SIGTERM/SIGINT, stdin EOF (the
    parent went away) or ``SERVER_MAX_LIFETIME``."""
    endpoints: list[utcp.Endpoint] = []
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            if args.system == "udp":
                sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
                await sock.bind((HOST, args.port))
                port = sock.getsockname()[1]
                nursery.start_soon(serve_udp, sock)
            elif args.system == "kernel":
                listeners = await nursery.start(
                    functools.partial(trio.serve_tcp, serve_stream, args.port, host=HOST)
                )
                port = listeners[0].socket.getsockname()[1]
            else:

                async def serve_utcp(stream: trio.abc.HalfCloseableStream) -> None:
                    if args.utcp_nagle:
                        nagle_on(stream)
                    await serve_stream(stream)

                serve = functools.partial(
                    utcp.serve_tcp,
                    serve_utcp,
                    args.port,
                    host=HOST,
                    config=utcp_config(args),
                    reuse_port=args.reuse_port,
                )
                listeners = await nursery.start(serve)
                port = listeners[0].getsockname()[1]
                endpoints.extend(lst.endpoint for lst in listeners)
            emit({"port": port, "pid": os.getpid()})

            async def watch_stdin() -> None:
                # Each "cpu" line asks for this process's CPU time so far (getrusage) and
                # its endpoints' transport counters; EOF means the parent went away.
                fd = sys.stdin.fileno()
                pending = b""
                while True:
                    await trio.lowlevel.wait_readable(fd)
                    data = os.read(fd, 4096)
                    if not data:
                        nursery.cancel_scope.cancel()
                        return
                    pending += data
                    while b"\n" in pending:
                        line, pending = pending.split(b"\n", 1)
                        if line.strip() == b"cpu":
                            report = {"cpu_s": cpu_now(), "sys_s": sys_now()}
                            emit({**report, "transport": transport_stats(endpoints)})

            async def watch_signals() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch_stdin)
            nursery.start_soon(watch_signals)
            await trio.sleep(SERVER_MAX_LIFETIME)
            nursery.cancel_scope.cancel()


# ================================================================= clients


def stream_stats(stream: trio.abc.Stream) -> Json | None:
    """A few of utcp's per-connection counters (None for kernel streams)."""
    if not isinstance(stream, utcp.UtcpStream):
        return None
    st = stream.statistics()
    return {
        "srtt_us": None if st.srtt is None else round(st.srtt * 1e6, 1),
        "cwnd": st.cwnd,
        "mss": st.mss,
        "segments_sent": st.segments_sent,
        "segments_received": st.segments_received,
        "retransmits": st.retransmits,
        "fast_retransmits": st.fast_retransmits,
        "rto_expiries": st.rto_expiries,
        "lost": st.lost,
        "bytes_retransmitted": st.bytes_retransmitted,
    }


Connect = Callable[[], Awaitable[trio.abc.HalfCloseableStream]]


async def stream_bulk(connect: Connect, nbytes: int) -> Json:
    """Send ``nbytes`` and wait for the server's byte count: goodput as the client sees it
    (from the first write until the receiver confirmed the last byte)."""
    payload = memoryview(bytes(CHUNK))
    stream = await connect()
    async with stream:
        wall0 = time.time()
        cpu0, sys0, t0 = cpu_now(), sys_now(), time.perf_counter()
        await stream.send_all(b"B")
        remaining = nbytes
        while remaining:
            n = min(CHUNK, remaining)
            await stream.send_all(payload[:n])
            remaining -= n
        await stream.send_eof()
        (received,) = struct.unpack("!Q", await receive_exactly(stream, 8))
        seconds = time.perf_counter() - t0
        cpu, cpu_sys = cpu_now() - cpu0, sys_now() - sys0
        stats = stream_stats(stream)
        kernel = transport_stats([stream.endpoint]) if isinstance(stream, utcp.UtcpStream) else None
    if received != nbytes:
        raise RuntimeError(f"server counted {received} bytes, sent {nbytes}")
    return {
        "bytes": received,
        "seconds": seconds,
        "MB_s": received / seconds / MB,
        "client_cpu_s": cpu,
        "client_sys_s": cpu_sys,
        "utcp_stats": stats,
        "client_transport": kernel,
        "t_start": wall0,
        "t_end": wall0 + seconds,
    }


async def handshakes(connect: Connect, count: int) -> Json:
    """``count`` connections opened and closed one after the other (a handshake each)."""
    wall0, t0 = time.time(), time.perf_counter()
    for _ in range(count):
        stream = await connect()
        await stream.aclose()
    seconds = time.perf_counter() - t0
    return {
        "handshakes": count,
        "seconds": seconds,
        "per_s": count / seconds,
        "t_start": wall0,
        "t_end": wall0 + seconds,
    }


def latency_record(rtts_ns: list[int], warmup: int, lost: int = 0) -> Json:
    us = sorted(t / 1000 for t in rtts_ns)
    return {
        "round_trips": len(us),
        "warmup": warmup,
        "lost": lost,
        "bytes": ECHO_SIZE,
        "seconds": sum(us) / 1e6,
        "p50_us": percentile(us, 0.50),
        "p99_us": percentile(us, 0.99),
        "min_us": us[0],
        "max_us": us[-1],
        "mean_us": statistics.fmean(us),
    }


async def stream_echo(connect: Connect, count: int, warmup: int) -> Json:
    """``warmup + count`` 64-byte ping-pongs on one connection; the first ``warmup`` are
    not counted."""
    stream = await connect()
    rtts: list[int] = []
    async with stream:
        await stream.send_all(b"E")
        cpu0 = cpu_now()
        for i in range(warmup + count):
            msg = i.to_bytes(8, "big") * (ECHO_SIZE // 8)
            t0 = time.perf_counter_ns()
            await stream.send_all(msg)
            echoed = await receive_exactly(stream, ECHO_SIZE)
            t1 = time.perf_counter_ns()
            if echoed != msg:
                raise RuntimeError(f"echo #{i} came back different")
            if i >= warmup:
                rtts.append(t1 - t0)
        cpu = cpu_now() - cpu0
        stats = stream_stats(stream)
        await stream.send_eof()
        await stream.receive_some(1)
    record = latency_record(rtts, warmup)
    record.update(client_cpu_s=cpu, utcp_stats=stats)
    return record


async def udp_bulk(port: int, nbytes: int) -> Json:
    """Blast ``nbytes`` of payload in 1400-byte datagrams; the receiver reports what it got
    and over how long (first to last arrival). Sent as fast as trio lets us: whatever the
    receiver cannot keep up with is dropped by the kernel and shows as ``loss``."""
    addr = (HOST, port)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        await sock.bind((HOST, 0))
        await udp_request(sock, addr, bytes([UDP_START]), UDP_STARTED)
        datagram = bytes([UDP_DATA]) + bytes(UDP_DATAGRAM - 1)
        count = math.ceil(nbytes / (UDP_DATAGRAM - 1))
        cpu0, t0 = cpu_now(), time.perf_counter()
        for _ in range(count):
            await sock.sendto(datagram, addr)
        send_seconds = time.perf_counter() - t0
        cpu = cpu_now() - cpu0
        await trio.sleep(0.05)  # let the receiver drain before asking for its count
        report = json.loads((await udp_request(sock, addr, bytes([UDP_FINISH]), UDP_REPORT))[1:])
    received, seconds = report["bytes"], report["seconds"]
    sent = count * (UDP_DATAGRAM - 1)
    return {
        "bytes": received,
        "seconds": seconds,
        "MB_s": received / seconds / MB if seconds > 0 else None,
        "datagram_size": UDP_DATAGRAM,
        "sent_bytes": sent,
        "sent_datagrams": count,
        "received_datagrams": report["datagrams"],
        "loss": 1 - report["datagrams"] / count,
        "send_seconds": send_seconds,
        "send_MB_s": sent / send_seconds / MB,
        "client_cpu_s": cpu,
    }


async def udp_echo(port: int, count: int, warmup: int) -> Json:
    """64-byte UDP ping-pong, the floor any UDP stack on trio pays: a connected non-blocking
    socket, ``send`` then ``wait_readable`` and ``recv`` (what utcp's transport does; trio's
    ``sendto`` would add an address resolution per call, and a cancel scope per ping costs
    as much again). Loopback does not lose a ping-pong's datagrams; if one is lost anyway the
    run stops at its time bound and the pings left count as lost."""
    rtts: list[int] = []
    done = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.connect((HOST, port))
        sock.setblocking(False)
        cpu0 = cpu_now()
        with trio.move_on_after(10.0 + 0.01 * (warmup + count)):
            for i in range(warmup + count):
                msg = bytes([UDP_PING]) + i.to_bytes(8, "big") * 7 + bytes(ECHO_SIZE - 57)
                t0 = time.perf_counter_ns()
                sock.send(msg)
                while True:
                    try:
                        if sock.recv(65536) == msg:
                            break
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(sock)
                t1 = time.perf_counter_ns()
                if i >= warmup:
                    rtts.append(t1 - t0)
                done += 1
        cpu = cpu_now() - cpu0
    if not rtts:
        raise TimeoutError("every UDP ping was lost")
    record = latency_record(rtts, warmup, warmup + count - done)
    record["client_cpu_s"] = cpu
    return record


async def client_main(args: argparse.Namespace) -> Json:
    config = utcp_config(args)

    async def connect() -> trio.abc.HalfCloseableStream:
        if args.system == "utcp":
            stream = await utcp.open_tcp_stream(HOST, args.port, config=config)
            if args.utcp_nagle:
                nagle_on(stream)
            return stream
        return await trio.open_tcp_stream(HOST, args.port)

    warmup = min(100, max(10, args.echo_count // 10))
    with trio.fail_after(args.timeout):
        if args.system == "udp":
            if args.test == "bulk":
                return await udp_bulk(args.port, args.bulk_bytes)
            return await udp_echo(args.port, args.echo_count, warmup)
        if args.test == "bulk":
            return await stream_bulk(connect, args.bulk_bytes)
        if args.test == "handshake":
            return await handshakes(connect, args.handshakes)
        return await stream_echo(connect, args.echo_count, warmup)


def run_client_role(args: argparse.Namespace) -> int:
    """Run one measurement and print it as one JSON line (``{"error": ...}`` on failure)."""
    try:
        with maybe_profile(args.profile):
            record = trio.run(client_main, args)
    except trio.TooSlowError:
        record = {"error": f"timed out after {args.timeout} s"}
    except Exception as exc:
        record = {"error": repr(exc)}
    emit(record)
    return 1 if "error" in record else 0


# ================================================================= orchestrator


class Server:
    """One ``--role server`` subprocess; ``stop()`` terminates it by PID (then kills it)."""

    def __init__(self, system: str, common: list[str], profile: str | None) -> None:
        cmd = [sys.executable, __file__, "--role", "server", "--system", system, "--port", "0"]
        cmd += common
        if profile:
            cmd += ["--profile", profile]
        self.system = system
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        stdout = self.proc.stdout
        assert stdout is not None
        hello = read_line(stdout, 15.0)
        if not hello.strip():
            self.stop()
            raise RuntimeError(f"{system} server (pid {self.pid}) did not report its port")
        self.port = int(json.loads(hello)["port"])

    def query(self) -> Json | None:
        """The server's own report (``cpu_s`` from getrusage, transport counters), or None
        if it does not answer within 10 s (a utcp or kernel server answers; see
        ``server_main``). Falls back to /proc for the CPU time."""
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write("cpu\n")
            stdin.flush()
        except OSError:
            return None
        try:
            report: Json = json.loads(read_line(stdout, 10.0))
        except json.JSONDecodeError:
            cpu = cpu_seconds(self.pid)
            return None if cpu is None else {"cpu_s": cpu, "transport": None}
        return report

    def stop(self) -> None:
        stop_process(self.proc)


def run_client(
    server: Server, test: str, common: list[str], timeout: float, profile: str | None
) -> Json:
    cmd = [sys.executable, __file__, "--role", "client", "--system", server.system]
    cmd += ["--port", str(server.port), "--test", test, "--timeout", str(timeout), *common]
    if profile:
        cmd += ["--profile", profile]
    before = server.query()
    try:
        done = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout + 30
        )
    except subprocess.TimeoutExpired:
        return {"error": f"client process killed after {timeout + 30} s"}
    after = server.query()
    lines = done.stdout.strip().splitlines()
    try:
        record: Json = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        record = {"error": f"client exited {done.returncode}: {done.stderr.strip()[-2000:]}"}
    if before is not None and after is not None:
        record["server_cpu_s"] = round(after["cpu_s"] - before["cpu_s"], 4)
        if "sys_s" in after and "sys_s" in before:
            record["server_sys_s"] = round(after["sys_s"] - before["sys_s"], 4)
        record["server_transport"] = after.get("transport")
    return record


def conditions(args: argparse.Namespace) -> Json:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "trio": trio.__version__,
        "utcp": utcp.__version__,
        "utcp_tree": git_describe(),
        "utcp_compiled": compiled_core(),
        "utcp_config": {
            k: v
            for k, v in dataclasses.asdict(utcp_config(args)).items()
            if k in ("nodelay", "congestion_control", "pacing", "mss")
            or k in config_overrides(args.utcp_set)
        },
        "bulk_bytes": args.bulk_bytes,
        "echo_count": args.echo_count,
        "rounds": args.rounds,
        "chunk": CHUNK,
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "profiled": bool(args.profile_dir),
    }


def median_of(records: list[Json], key: str) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None and "error" not in r]
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def describe(record: Json) -> str:
    """A short human-readable form of one measurement, for the progress lines on stderr."""
    if "error" in record:
        return f"ERROR {record['error']}"
    if record["test"] == "bulk":
        return f"{record['MB_s'] or 0:.1f} MB/s"
    return f"p50 {record['p50_us']:.0f} us, p99 {record['p99_us']:.0f} us"


def orchestrate(args: argparse.Namespace) -> int:
    common = ["--bulk-bytes", str(args.bulk_bytes), "--echo-count", str(args.echo_count)]
    if args.utcp_nagle:
        common.append("--utcp-nagle")
    for item in args.utcp_set:
        common += ["--utcp-set", item]
    prof_dir = Path(args.profile_dir) if args.profile_dir else None
    if prof_dir is not None:
        prof_dir.mkdir(parents=True, exist_ok=True)

    def prof(name: str, system: str) -> str | None:
        return str(prof_dir / f"{system}-{name}.prof") if prof_dir and system == "utcp" else None

    cond = conditions(args)
    results: dict[tuple[str, str], list[Json]] = {(s, t): [] for s in args.systems for t in TESTS}
    failures = 0
    servers: dict[str, Server] = {}
    try:
        for system in args.systems:
            servers[system] = Server(system, common, prof("server", system))
            print(
                f"{system} server: pid {servers[system].pid}, port {servers[system].port}",
                file=sys.stderr,
            )
        for rnd in range(1, args.rounds + 1):
            for system in args.systems:
                for test in TESTS:
                    record = run_client(
                        servers[system],
                        test,
                        common,
                        args.timeout,
                        prof(f"client-{test}-r{rnd}", system),
                    )
                    record = {
                        "kind": "measurement",
                        "system": system,
                        "test": test,
                        "round": rnd,
                        **record,
                        "conditions": cond,
                    }
                    results[(system, test)].append(record)
                    failures += "error" in record
                    emit(record)
                    print(f"round {rnd} {system} {test}: {describe(record)}", file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()

    medians: Json = {}
    for system in args.systems:
        bulk, echo = results[(system, "bulk")], results[(system, "echo")]
        medians[system] = {
            "bulk_MB_s": median_of(bulk, "MB_s"),
            "echo_p50_us": median_of(echo, "p50_us"),
            "echo_p99_us": median_of(echo, "p99_us"),
            "rounds_ok": [sum("error" not in r for r in bulk), sum("error" not in r for r in echo)],
        }

    def get(system: str, key: str) -> float | None:
        value: float | None = medians.get(system, {}).get(key)
        return value

    emit(
        {
            "kind": "summary",
            "median": medians,
            "ratios": {
                "utcp_bulk_over_udp_bulk": ratio(get("utcp", "bulk_MB_s"), get("udp", "bulk_MB_s")),
                "utcp_echo_p50_over_kernel_echo_p50": ratio(
                    get("utcp", "echo_p50_us"), get("kernel", "echo_p50_us")
                ),
                "utcp_bulk_over_kernel_bulk": ratio(
                    get("utcp", "bulk_MB_s"), get("kernel", "bulk_MB_s")
                ),
                "utcp_echo_p50_over_udp_echo_p50": ratio(
                    get("utcp", "echo_p50_us"), get("udp", "echo_p50_us")
                ),
            },
            "failures": failures,
            "conditions": {
                **cond,
                "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            },
        }
    )
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
        "--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS), help="what to measure"
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per measurement")
    parser.add_argument("--utcp-nagle", action="store_true", help="keep Nagle on for utcp")
    parser.add_argument(
        "--utcp-set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a utcp.Config field on both ends, e.g. pacing=false (repeatable)",
    )
    parser.add_argument("--profile-dir", help="cProfile the utcp server and clients into here")
    # Internal: how the orchestrator starts its subprocesses.
    parser.add_argument(
        "--role", choices=("bench", "server", "client"), default="bench", help=argparse.SUPPRESS
    )
    parser.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--test", choices=TESTS + EXTRA_TESTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--bulk-bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--handshakes", type=int, default=100, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.bulk_mb, args.echo_count, args.rounds = 5.0, 200, 1
    if args.bulk_bytes is None:
        args.bulk_bytes = int(args.bulk_mb * MB)
    if args.bulk_bytes < 1 or args.echo_count < 1 or args.rounds < 1 or args.timeout <= 0:
        parser.error("--bulk-mb, --echo-count, --rounds and --timeout must be positive")
    if args.role != "bench" and args.system is None:
        parser.error(f"--role {args.role} needs --system")
    if args.role == "client" and args.test is None:
        parser.error("--role client needs --test")
    try:
        utcp_config(args)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "server":
        with maybe_profile(args.profile):
            trio.run(server_main, args)
        return 0
    if args.role == "client":
        return run_client_role(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
