"""SYN flood benchmark: legitimate clients against a utcp listener under a spoofed SYN flood.

One server process (an echo listener on 127.0.0.1, default ``Config``: SYN cookies on) and
this process, which
  * floods the listener with ``--syns`` crafted SYN datagrams (random TCP source port,
    sequence number and options) from ``--sockets`` UDP sockets on 127.0.0.1 that never
    answer, paced at ``--rate`` datagrams per second;
  * once ``--clients-after`` of the flood has gone out (the SYN queue is full by then),
    starts ``--clients`` legitimate clients, each with its own endpoint, which connect,
    send ``--size`` random bytes and read the echo back until EOF: the echo's sha256 must
    equal the sent bytes' for the transfer to count as intact;
  * asks the server for its counters (``HostStats``) and its peak RSS (``VmHWM``) when the
    flood and every client are done.
Output: a markdown summary on stdout, then one JSON line with the figures and the conditions
(Python, CPU count, kernel, load average). Progress goes to stderr.

    PYTHONPATH=. python bench/bench_flood.py                   # 100,000 SYNs, 50 clients
    PYTHONPATH=. python bench/bench_flood.py --syns 10000 --clients 20

Every loop is bounded: the flood sends exactly ``--syns`` datagrams, each client gives up
after ``--timeout`` seconds, and the server (killed by PID at the end) exits by itself
after an hour. Exit status: 0 if every legitimate transfer completed intact, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

import utcp
from utcp._wire import SYN, Segment, encode

# The repository root first: the bench package's shared helpers (bench/common.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import stop_process

HOST = "127.0.0.1"  # the benchmark never talks to anything but the loopback interface
SERVER_MAX_LIFETIME = 3600.0
BATCH = 200  # flood datagrams between checks of the pacing clock

Json = dict[str, Any]


def log(message: str) -> None:
    print(f"bench_flood: {message}", file=sys.stderr, flush=True)


def proc_status(pid: int | str, field: str) -> int:
    """A ``/proc/PID/status`` size field (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc status")


# ================================================================= server process


async def echo(stream: utcp.UtcpStream) -> None:
    try:
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def server_main() -> None:
    """Print the port, then answer each line on stdin with a JSON line of counters."""
    with trio.move_on_after(SERVER_MAX_LIFETIME):
        async with trio.open_nursery() as nursery:
            endpoint = await utcp.open_endpoint((HOST, 0))
            listener = await utcp.listen_on(endpoint)
            nursery.start_soon(trio.serve_listeners, echo, [listener])
            print(endpoint.local_address[1], flush=True)
            while await trio.to_thread.run_sync(sys.stdin.readline):
                stats = dict(vars(endpoint.host.stats))
                stats["rss"] = proc_status("self", "VmRSS")
                stats["peak_rss"] = proc_status("self", "VmHWM")
                stats["connections"] = len(endpoint.host.connections)
                print(json.dumps(stats), flush=True)
            nursery.cancel_scope.cancel()


# ================================================================= flood and clients


def crafted_syns(count: int, port: int, seed: int) -> list[bytes]:
    """``count`` SYNs to TCP ``port`` with random source ports, ISNs and options."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        seg = Segment(rng.randrange(1024, 65536), port, rng.getrandbits(32), 0, SYN, 65535)
        seg.mss = rng.choice([536, 1220, 1460])
        if rng.random() < 0.8:
            seg.wscale = rng.randrange(0, 15)
            seg.sack_permitted = True
            seg.timestamps = (rng.getrandbits(32), 0)
        out.append(encode(seg))
    return out


async def flood(
    args: argparse.Namespace,
    port: int,
    socks: list[socket.socket],
    sent: list[int],
    result: Json,
) -> None:
    syns = crafted_syns(args.syns, port, args.seed)
    start = time.perf_counter()
    blocked = 0
    for i, data in enumerate(syns):
        if i % BATCH == 0:
            ahead = start + i / args.rate - time.perf_counter()
            await trio.sleep(max(0.0, ahead))
        try:
            socks[i % len(socks)].sendto(data, (HOST, port))
        except BlockingIOError:
            blocked += 1  # our own socket buffer is full: that SYN is lost, like on a wire
        sent[0] = i + 1
    elapsed = time.perf_counter() - start
    result["flood_seconds"] = elapsed
    result["flood_rate"] = args.syns / elapsed
    result["flood_blocked_locally"] = blocked
    log(f"flood: {args.syns} SYNs in {elapsed:.1f} s ({args.syns / elapsed:.0f}/s)")


async def client(args: argparse.Namespace, port: int, n: int, outcome: list[Json]) -> None:
    payload = random.Random(args.seed * 1000 + n).randbytes(args.size)
    record: Json = {"client": n}
    start = time.perf_counter()
    try:
        with trio.fail_after(args.timeout):
            stream = await utcp.open_tcp_stream(HOST, port)
            record["connect_s"] = time.perf_counter() - start
            digest = hashlib.sha256()
            async with stream:

                async def sender() -> None:
                    for i in range(0, len(payload), 16384):
                        await stream.send_all(payload[i : i + 16384])
                    await stream.send_eof()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sender)
                    received = 0
                    while data := await stream.receive_some():
                        digest.update(data)
                        received += len(data)
            record["intact"] = digest.digest() == hashlib.sha256(payload).digest()
            record["received"] = received
    except Exception as exc:  # the figure to report is which clients failed, and why
        record["error"] = repr(exc)
        record["intact"] = False
    record["total_s"] = time.perf_counter() - start
    outcome.append(record)


async def client_main(args: argparse.Namespace, port: int) -> Json:
    result: Json = {}
    sent = [0]
    outcome: list[Json] = []
    # The flood's sockets stay open (and unread) until the end: its SYN-ACKs are swallowed,
    # not answered by ICMP port unreachables.
    socks: list[socket.socket] = []
    try:
        for _ in range(args.sockets):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.bind((HOST, 0))
            sock.setblocking(False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood, args, port, socks, sent, result)
            while sent[0] < args.clients_after * args.syns:
                await trio.sleep(0.01)
            log(f"{sent[0]} SYNs out: starting {args.clients} clients")
            async with trio.open_nursery() as clients:
                for n in range(args.clients):
                    clients.start_soon(client, args, port, n, outcome)
    finally:
        for sock in socks:
            sock.close()
    intact = [r for r in outcome if r["intact"]]
    result["clients"] = args.clients
    result["clients_intact"] = len(intact)
    result["client_errors"] = sorted({r["error"] for r in outcome if "error" in r})
    if intact:
        connect = sorted(r["connect_s"] for r in intact)
        result["connect_p50_s"] = connect[len(connect) // 2]
        result["connect_max_s"] = connect[-1]
        result["transfer_max_s"] = max(r["total_s"] for r in intact)
    return result


def conditions(args: argparse.Namespace) -> Json:
    return {
        "syns": args.syns,
        "sockets": args.sockets,
        "rate_target": args.rate,
        "clients": args.clients,
        "size": args.size,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "loadavg": os.getloadavg(),
        "utcp": utcp.__file__,
    }


def summary(result: Json, server: Json, cond: Json) -> str:
    rows = [
        ("SYNs sent (target rate)", f"{cond['syns']:,} ({cond['rate_target']:,.0f}/s)"),
        (
            "flood duration, achieved rate",
            f"{result['flood_seconds']:.1f} s, {result['flood_rate']:,.0f}/s",
        ),
        ("legitimate transfers intact", f"{result['clients_intact']} / {result['clients']}"),
        (
            "connect p50 / max",
            f"{result.get('connect_p50_s', math.nan):.2f} / "
            f"{result.get('connect_max_s', math.nan):.2f} s",
        ),
        ("server datagrams received", f"{server['datagrams_received']:,}"),
        (
            "SYN cookies sent / validated / rejected",
            f"{server['syn_cookies_sent']:,} / "
            f"{server['syn_cookies_validated']:,} / {server['syn_cookies_rejected']:,}",
        ),
        (
            "server RSS before / peak",
            f"{server['rss_before'] / 1e6:.1f} / {server['peak_rss'] / 1e6:.1f} MB",
        ),
        ("server connections at the end", f"{server['connections']}"),
    ]
    lines = ["| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def orchestrate(args: argparse.Namespace) -> tuple[int, Json]:
    server = subprocess.Popen(
        [sys.executable, __file__, "--role", "server"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdin is not None and server.stdout is not None

        def ask() -> Json:
            assert server.stdin is not None and server.stdout is not None
            server.stdin.write("stats\n")
            server.stdin.flush()
            stats: Json = json.loads(server.stdout.readline())
            return stats

        port = int(server.stdout.readline())
        before = ask()
        cond = conditions(args)
        result = trio.run(client_main, args, port)
        stats = ask()
        stats["rss_before"] = before["rss"]
        record = {"bench": "flood", "result": result, "server": stats, "conditions": cond}
        print(summary(result, stats, cond))
        print(json.dumps(record))
        ok = result["clients_intact"] == args.clients
        return (0 if ok else 1), record
    finally:
        stop_process(server)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--syns", type=int, default=100_000, help="flood SYNs (100,000)")
    parser.add_argument("--sockets", type=int, default=300, help="flood source sockets")
    parser.add_argument("--rate", type=float, default=20_000.0, help="flood SYNs per second")
    parser.add_argument("--clients", type=int, default=50, help="legitimate clients (50)")
    parser.add_argument("--size", type=int, default=100_000, help="bytes each client sends")
    parser.add_argument(
        "--clients-after", type=float, default=0.1, help="share of the flood sent first"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="per client (s)")
    parser.add_argument("--seed", type=int, default=4987)
    parser.add_argument(
        "--role", choices=("bench", "server"), default="bench", help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "server":
        trio.run(server_main)
        return 0
    return orchestrate(args)[0]


if __name__ == "__main__":
    sys.exit(main())
