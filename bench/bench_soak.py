"""Soak benchmark: many concurrent established connections on one server port, exchanging
messages for minutes.

One server process (``listen_on`` one endpoint on 127.0.0.1, an echo task per connection)
and ``--client-procs`` client processes, each with one endpoint holding its share of
``--connections``. In order:
  * the clients open their connections, 100 handshakes in parallel per process (handshake
    rate: connections over the time until the last one is established);
  * the server's RSS is read (``/proc/PID/status`` VmRSS) before the first connection and
    with every connection established: the growth over the count is the RSS per connection;
  * for ``--duration`` seconds every connection sends a 64-byte message every
    ``--interval`` seconds (at a random phase) and waits for its echo, which must match;
    the round-trip times give p50/p99, the server's RSS is sampled every second (peak);
  * errors: failed handshakes, broken connections, echoes that did not match, messages that
    missed their deadline. The figure must be 0.
Output: a markdown table on stdout, then one JSON line with the figures and the conditions
(Python, CPU count, kernel, load average before and after). Progress goes to stderr.

    PYTHONPATH=. python bench/bench_soak.py                  # 10,000 connections, 180 s
    PYTHONPATH=. python bench/bench_soak.py --quick          # 200 connections, 10 s

Every process is bounded: the clients give up after ``--timeout`` seconds, the server exits
by itself after an hour and is killed by PID at the end. Exit status: 0 if every connection
was established and every message echoed intact, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import trio

import utcp

# The repository root first: the bench package's shared helpers (bench/common.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import percentile, rss_bytes, stop_process

HOST = "127.0.0.1"  # the benchmark never talks to anything but the loopback interface
MESSAGE = 64
PARALLEL = 100
SERVER_MAX_LIFETIME = 3600.0
CONFIG = utcp.Config(nodelay=True)  # messages go out at once, as with TCP_NODELAY

Json = dict[str, Any]


def log(message: str) -> None:
    print(f"bench_soak: {message}", file=sys.stderr, flush=True)


# ================================================================= server process


async def echo(stream: utcp.UtcpStream) -> None:
    try:
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # a client endpoint closing with RSTs at the end


async def server_main() -> None:
    with trio.move_on_after(SERVER_MAX_LIFETIME):
        endpoint = await utcp.open_endpoint((HOST, 0), config=CONFIG)
        listener = await utcp.listen_on(endpoint, backlog=4096)
        print(endpoint.local_address[1], flush=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, echo, [listener])
            while True:  # the server's own counters on stderr, every 10 s (bounded above)
                await trio.sleep(10)
                stats = endpoint.statistics()
                host = dataclasses.asdict(stats.host)
                print(json.dumps({"server_stats": host}), file=sys.stderr, flush=True)


# ================================================================= client processes


async def client_main(args: argparse.Namespace) -> Json:
    """Open ``args.share`` connections, say "ready", wait for "go", exchange messages."""
    result: Json = {"errors": 0, "error_kinds": {}, "failed_connections": []}
    failed: list[dict[str, str]] = result["failed_connections"]
    errors: dict[str, int] = result["error_kinds"]

    def error(kind: str) -> None:
        result["errors"] += 1
        errors[kind] = errors.get(kind, 0) + 1

    target = (HOST, args.port)
    streams: list[utcp.UtcpStream] = []
    latencies: list[float] = []
    with trio.move_on_after(args.timeout) as scope:
        ep = await utcp.open_endpoint((HOST, 0), config=CONFIG)
        remaining = [args.share]

        async def opener() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                try:
                    streams.append(await utcp.connect_on(ep, target))
                except OSError as exc:
                    error(f"connect: {exc!r}")

        start = time.perf_counter()
        async with trio.open_nursery() as openers:
            for _ in range(PARALLEL):
                openers.start_soon(opener)
        result["handshake_seconds"] = time.perf_counter() - start
        result["established"] = len(streams)
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)  # "go"
        rng = random.Random(args.seed)
        end = trio.current_time() + args.duration

        async def talker(n: int, stream: utcp.UtcpStream, phase: float) -> None:
            tick = trio.current_time() + phase
            seq = 0
            try:
                while tick < end:
                    await trio.sleep_until(tick)
                    message = f"{n:08d} {seq:012d} ".encode().ljust(MESSAGE, b".")
                    sent = time.perf_counter()
                    with trio.move_on_after(args.interval * 10) as deadline:
                        await stream.send_all(message)
                        got = b""
                        while len(got) < MESSAGE:
                            data = await stream.receive_some(MESSAGE - len(got))
                            if not data:
                                error("eof")
                                return
                            got += data
                    if deadline.cancelled_caught:
                        error("echo missed its deadline")
                        return
                    latencies.append(time.perf_counter() - sent)
                    if got != message:
                        error("echo mismatch")
                    seq += 1
                    tick += args.interval
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                error(f"broken: {exc!r}")
                if len(failed) < 5:  # what utcp knew of the first few, for diagnosis
                    st = stream.statistics()
                    failed.append({k: str(v) for k, v in dataclasses.asdict(st).items()})

        async with trio.open_nursery() as talkers:
            for n, stream in enumerate(streams):
                talkers.start_soon(talker, n, stream, rng.uniform(0, args.interval))
        await ep.aclose()
    if scope.cancelled_caught:
        error("client timed out")
    result["messages"] = len(latencies)
    result["latencies_us"] = [round(x * 1e6) for x in latencies]
    return result


# ================================================================= orchestration


def conditions(args: argparse.Namespace) -> Json:
    return {
        "connections": args.connections,
        "client_procs": args.client_procs,
        "duration_s": args.duration,
        "interval_s": args.interval,
        "message_bytes": MESSAGE,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "loadavg_before": os.getloadavg(),
        "utcp": utcp.__file__,
    }


def table(result: Json) -> str:
    rows = [
        ("connections established", f"{result['established']:,} / {result['connections']:,}"),
        ("handshakes/s (100 in parallel per client)", f"{result['handshakes_per_s']:,.0f}"),
        ("server RSS, no connections", f"{result['rss_idle_mb']:.1f} MB"),
        ("server RSS, all established", f"{result['rss_established_mb']:.1f} MB"),
        ("RSS per connection", f"{result['rss_per_connection_kb']:.1f} kB"),
        ("server RSS peak while messaging", f"{result['rss_peak_mb']:.1f} MB"),
        ("messages echoed", f"{result['messages']:,} ({result['messages_per_s']:,.0f}/s)"),
        ("message RTT p50 / p99", f"{result['p50_us']:,.0f} / {result['p99_us']:,.0f} us"),
        ("errors", f"{result['errors']} {result['error_kinds'] or ''}"),
    ]
    lines = ["| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def orchestrate(args: argparse.Namespace) -> int:
    cond = conditions(args)
    server = subprocess.Popen(
        [sys.executable, __file__, "--role", "server"], stdout=subprocess.PIPE, text=True
    )
    clients: list[subprocess.Popen[str]] = []
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        time.sleep(0.5)
        rss_idle = rss_bytes(server.pid)
        shares = [
            args.connections // args.client_procs + (i < args.connections % args.client_procs)
            for i in range(args.client_procs)
        ]
        for i, share in enumerate(shares):
            clients.append(
                subprocess.Popen(
                    [
                        sys.executable, __file__, "--role", "client", "--port", str(port),
                        "--share", str(share), "--seed", str(args.seed + i),
                        "--duration", str(args.duration), "--interval", str(args.interval),
                        "--timeout", str(args.timeout),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )  # fmt: skip
        start = time.perf_counter()
        for proc in clients:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                log(f"a client process did not get ready: {line!r}")
        handshake_wall = time.perf_counter() - start
        time.sleep(1.0)  # the server's accept loop and handler tasks settle
        rss_established = rss_bytes(server.pid)
        log(f"established; server RSS {rss_established / 1e6:.1f} MB; messaging")
        for proc in clients:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        # Each client's result (with every latency) is larger than a pipe's buffer: read
        # them while the clients run, or a client blocks writing it and never exits.
        texts: list[str] = ["" for _ in clients]

        def collect(i: int, stream: IO[str]) -> None:
            texts[i] = stream.read()

        readers = []
        for i, proc in enumerate(clients):
            assert proc.stdout is not None
            readers.append(threading.Thread(target=collect, args=(i, proc.stdout), daemon=True))
            readers[-1].start()
        peak = rss_established
        while any(proc.poll() is None for proc in clients):
            peak = max(peak, rss_bytes(server.pid))
            time.sleep(1.0)
        for reader in readers:
            reader.join(timeout=60.0)
        outs = [
            json.loads(t.strip().splitlines()[-1]) if t.strip() else {"errors": 1} for t in texts
        ]
        latencies = sorted(x for out in outs for x in out.get("latencies_us", []))
        error_kinds: dict[str, int] = {}
        for out in outs:
            for kind, count in out.get("error_kinds", {"client process failed": 1}).items():
                error_kinds[kind] = error_kinds.get(kind, 0) + count
        established = sum(out.get("established", 0) for out in outs)
        result: Json = {
            "connections": args.connections,
            "established": established,
            # Each client times its own handshakes; they ran side by side.
            "handshakes_per_s": established
            / max([out.get("handshake_seconds", handshake_wall) for out in outs] or [1.0]),
            "rss_idle_mb": rss_idle / 1e6,
            "rss_established_mb": rss_established / 1e6,
            "rss_per_connection_kb": (rss_established - rss_idle) / max(established, 1) / 1e3,
            "rss_peak_mb": peak / 1e6,
            "messages": len(latencies),
            "messages_per_s": len(latencies) / args.duration,
            "p50_us": percentile(latencies, 0.5) if latencies else math.nan,
            "p99_us": percentile(latencies, 0.99) if latencies else math.nan,
            "errors": sum(out.get("errors", 1) for out in outs),
            "error_kinds": error_kinds,
            "failed_connections": [f for out in outs for f in out.get("failed_connections", [])],
        }
        cond["loadavg_after"] = os.getloadavg()
        print(table(result))
        print(json.dumps({"bench": "soak", "result": result, "conditions": cond}))
        ok = result["errors"] == 0 and established == args.connections
        return 0 if ok else 1
    finally:
        for proc in [*clients, server]:
            stop_process(proc)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000, help="N (10,000)")
    parser.add_argument("--client-procs", type=int, default=2, help="client processes (2)")
    parser.add_argument("--duration", type=float, default=180.0, help="messaging time (s)")
    parser.add_argument("--interval", type=float, default=10.0, help="per connection (s)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="client gives up (s)")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="200 connections, 10 s")
    parser.add_argument(
        "--role", choices=("bench", "server", "client"), default="bench", help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--share", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.connections, args.duration, args.interval = 200, 10.0, 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "server":
        trio.run(server_main)
        return 0
    if args.role == "client":
        print(json.dumps(trio.run(client_main, args)), flush=True)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
