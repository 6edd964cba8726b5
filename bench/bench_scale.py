"""Scale benchmark: what idle connections cost a utcp server and the one connection in use.

One server process (``utcp.serve_tcp`` on 127.0.0.1, an echo handler per connection) and
one client process (this one) with a single client endpoint, as the scale targets of issue
11 put it. In order, it measures
  * echo p50/p99 of ``--echo-count`` 64-byte ping-pongs on one active connection, with no
    other connection open;
  * handshakes per second, serially (``--serial`` connections, one after the other);
  * handshakes per second with 100 in parallel, opening connections until ``--connections``
    (N) are established (the serial ones count towards N);
  * the server process's RSS (``/proc/PID/status`` VmRSS) with N connections established,
    and the growth over its RSS before the first connection;
  * the same echo again with the N connections open and idle.
Output: a markdown table on stdout, then one JSON line with the figures and the conditions
(Python, CPU count, kernel). Progress goes to stderr.

    python bench/bench_scale.py                      # N = 1,000
    python bench/bench_scale.py --connections 10000  # the full figure

Run it with the tree to measure first on the path (``PYTHONPATH=. python bench/...``):
a script's own directory, not the working directory, heads ``sys.path``; the JSON records
which ``utcp`` was measured. The server is started once and killed by PID at the end.
Exit status: 0 if every measurement completed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

# UTCP_BENCH_PATH: another build of utcp to measure (bench/build_compiled.py), as in
# bench_loopback.py; PYTHONPATH works too.
if os.environ.get("UTCP_BENCH_PATH"):
    sys.path.insert(0, os.path.abspath(os.environ["UTCP_BENCH_PATH"]))
import utcp

# The repository root first: the bench package's shared helpers (bench/common.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import compiled_core, percentile, rss_bytes, stop_process

HOST = "127.0.0.1"  # the benchmark never talks to anything but the loopback interface
ECHO_SIZE = 64
PARALLEL = 100
SERVER_MAX_LIFETIME = 3600.0  # a server left behind by accident exits on its own
CONFIG = utcp.Config(nodelay=True)  # as trio.SocketStream sets TCP_NODELAY

Json = dict[str, Any]


def log(message: str) -> None:
    print(f"bench_scale: {message}", file=sys.stderr, flush=True)


# ================================================================= server process


async def echo(stream: utcp.UtcpStream) -> None:
    try:
        async with stream:
            while True:
                data = await stream.receive_some()
                if not data:
                    return
                await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client endpoint closes with RSTs at the end


async def server_main() -> None:
    with trio.move_on_after(SERVER_MAX_LIFETIME):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                lambda task_status: utcp.serve_tcp(
                    echo, 0, host=HOST, config=CONFIG, task_status=task_status
                )
            )
            print(listeners[0].getsockname()[1], flush=True)


# ================================================================= client (this process)


async def echo_latencies(stream: utcp.UtcpStream, count: int) -> list[float]:
    payload = b"e" * ECHO_SIZE
    samples: list[float] = []
    for _ in range(count):
        start = time.perf_counter()
        await stream.send_all(payload)
        got = 0
        while got < ECHO_SIZE:
            data = await stream.receive_some(ECHO_SIZE - got)
            if not data:
                raise RuntimeError("echo server closed the connection")
            got += len(data)
        samples.append(time.perf_counter() - start)
    samples.sort()
    return samples


async def client_main(args: argparse.Namespace, port: int, server_pid: int) -> Json:
    target = (HOST, port)
    result: Json = {}
    rss_before = rss_bytes(server_pid)
    async with trio.open_nursery() as nursery:
        ep = await utcp.open_endpoint((HOST, 0), config=CONFIG)
        nursery.cancel_scope.deadline = trio.current_time() + args.timeout
        streams: list[utcp.UtcpStream] = []

        active = await utcp.connect_on(ep, target)
        await echo_latencies(active, 20)  # warm up
        lat = await echo_latencies(active, args.echo_count)
        result["echo_p50_us_idle0"] = percentile(lat, 0.5) * 1e6
        result["echo_p99_us_idle0"] = percentile(lat, 0.99) * 1e6
        log(f"echo p50 with no idle connections: {result['echo_p50_us_idle0']:.0f} us")

        start = time.perf_counter()
        for _ in range(args.serial):
            streams.append(await utcp.connect_on(ep, target))
        result["handshakes_per_s_serial"] = args.serial / (time.perf_counter() - start)
        log(f"serial handshakes: {result['handshakes_per_s_serial']:.0f}/s")

        todo = max(0, args.connections - 1 - len(streams))
        remaining = [todo]

        async def opener() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                streams.append(await utcp.connect_on(ep, target))

        start = time.perf_counter()
        async with trio.open_nursery() as openers:
            for _ in range(PARALLEL):
                openers.start_soon(opener)
        elapsed = time.perf_counter() - start
        result["handshakes_per_s_parallel"] = todo / elapsed if todo else None
        log(f"{len(streams) + 1} connections open; parallel handshakes {todo / elapsed:.0f}/s")

        await trio.sleep(1.0)  # let the server's accept loop and handler tasks settle
        rss_after = rss_bytes(server_pid)
        result["server_rss_mb"] = rss_after / 1e6
        result["server_rss_growth_mb"] = (rss_after - rss_before) / 1e6
        log(f"server RSS {rss_after / 1e6:.1f} MB")

        lat = await echo_latencies(active, args.echo_count)
        result["echo_p50_us_idleN"] = percentile(lat, 0.5) * 1e6
        result["echo_p99_us_idleN"] = percentile(lat, 0.99) * 1e6
        result["echo_p50_ratio"] = result["echo_p50_us_idleN"] / result["echo_p50_us_idle0"]
        log(f"echo p50 with {len(streams)} idle: {result['echo_p50_us_idleN']:.0f} us")
        await ep.aclose()
        nursery.cancel_scope.cancel()
    return result


def conditions(args: argparse.Namespace) -> Json:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "connections": args.connections,
        "serial": args.serial,
        "parallel": PARALLEL,
        "echo_count": args.echo_count,
        "utcp": utcp.__version__,
        "utcp_path": os.path.dirname(utcp.__file__),  # which tree was measured
        "utcp_compiled": compiled_core(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_avg": os.getloadavg(),
    }


def table(result: Json, cond: Json) -> str:
    n = cond["connections"]

    def fmt(value: float | None, digits: int = 0) -> str:
        return "n/a" if value is None else f"{value:,.{digits}f}"

    rows = [
        (f"server RSS with {n:,} connections (MB)", fmt(result["server_rss_mb"], 1)),
        ("server RSS growth over no connections (MB)", fmt(result["server_rss_growth_mb"], 1)),
        ("echo p50, 0 idle (us)", fmt(result["echo_p50_us_idle0"])),
        (f"echo p50, {n - 1:,} idle (us)", fmt(result["echo_p50_us_idleN"])),
        ("echo p50 ratio idle N / idle 0", fmt(result["echo_p50_ratio"], 2)),
        (
            "echo p99, 0 idle / N idle (us)",
            f"{fmt(result['echo_p99_us_idle0'])} / {fmt(result['echo_p99_us_idleN'])}",
        ),
        ("handshakes/s, serial", fmt(result["handshakes_per_s_serial"])),
        (f"handshakes/s, {PARALLEL} in parallel", fmt(result["handshakes_per_s_parallel"])),
    ]
    lines = ["| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines.append("")
    lines.append(
        f"Python {cond['python']}, {cond['cpu_count']} CPUs, Linux {cond['kernel']}, "
        f"load {cond['load_avg'][0]:.2f}"
    )
    return "\n".join(lines)


def orchestrate(args: argparse.Namespace) -> int:
    server = subprocess.Popen(
        [sys.executable, __file__, "--role", "server"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        cond = conditions(args)
        try:
            result = trio.run(client_main, args, port, server.pid)
        except Exception as exc:  # report what failed, still kill the server
            log(f"failed: {exc!r}")
            return 1
        print(table(result, cond))
        print(json.dumps({"bench": "scale", "result": result, "conditions": cond}))
        return 0
    finally:
        stop_process(server)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000, help="N (default 1000)")
    parser.add_argument("--serial", type=int, default=200, help="serial handshakes timed")
    parser.add_argument("--echo-count", type=int, default=1000, help="echoes per p50")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after (s)")
    parser.add_argument(
        "--role", choices=("bench", "server"), default="bench", help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.connections < args.serial + 1:
        parser.error("--connections must exceed --serial")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "server":
        trio.run(server_main)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
