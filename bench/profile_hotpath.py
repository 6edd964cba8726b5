"""Per-segment CPU cost of utcp's hot path, sender and receiver apart, with optional profiles.

Three drivers, all in one process so that ``time.process_time`` (CPU, not wall time, so it
moves little with the load of a shared machine) can be charged to one side at a time:

* ``core-bulk``: two sans-IO ``Host`` objects joined by a plain list, no sockets, no trio. The
  client writes ``--mb`` MB as fast as its windows allow, the server reads everything at once.
  Every call into the client host (send, output, the ACKs it is fed) is charged to the
  sender, every call into the server host (data fed, reads, ACK output) to the receiver. The
  virtual clock advances ``--step`` seconds per exchange; datagrams are fed in batches of at
  most the endpoint's receive batch, as ``Endpoint._pump`` feeds them.
* ``core-echo``: the same pair, ``--count`` 64-byte ping-pongs (Nagle off, as on a stream).
* ``socket``: the public API on 127.0.0.1 in one trio run (``utcp.serve_tcp`` and
  ``utcp.open_tcp_stream``, the server and client code of ``bench_loopback.py``): bulk CPU
  per MB for the whole process (both ends) and the echo's p50/p99 with both ends in one
  process (the two-process figures come from ``bench_loopback.py``).

``--profile sender|receiver`` runs cProfile over that side's calls only (core drivers) or over
the whole run (socket) and prints the top functions by internal time with their cumulative
share. Output: one JSON line per driver, then the profile text.

    python bench/profile_hotpath.py core-bulk --mb 20
    python bench/profile_hotpath.py core-bulk --mb 20 --profile receiver
    python bench/profile_hotpath.py core-echo --count 2000
    python bench/profile_hotpath.py socket --mb 20 --count 2000
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import os
import pstats
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

# This tree's utcp (not an installed copy) and the loopback bench beside this file.
sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]
if os.environ.get("UTCP_BENCH_PATH"):  # another build of utcp (bench/build_compiled.py)
    sys.path.insert(0, os.path.abspath(os.environ["UTCP_BENCH_PATH"]))

import bench_loopback as loopback  # noqa: E402
import trio  # noqa: E402

import utcp  # noqa: E402
from utcp import _fastpath  # noqa: E402
from utcp._config import Config  # noqa: E402
from utcp._connection import Connection  # noqa: E402
from utcp._host import Host  # noqa: E402
from utcp._state import State  # noqa: E402
from utcp._transport import RECV_BATCH  # noqa: E402
from utcp._wire import Address  # noqa: E402

CLIENT: Address = ("127.0.0.1", 40000)
SERVER: Address = ("127.0.0.1", 443)
HEADER_WITH_TS = 32  # 20 bytes of header and 12 of timestamps: a segment without payload
MAX_ROUNDS = 10_000_000  # every loop is bounded
T = TypeVar("T")


class Meter:
    """CPU seconds charged to one side, and an optional profiler enabled only meanwhile."""

    def __init__(self, profile: bool) -> None:
        self.cpu = 0.0
        self.profiler = cProfile.Profile() if profile else None

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        prof = self.profiler
        t0 = time.process_time()
        if prof is not None:
            prof.enable()
        try:
            return fn(*args)
        finally:
            if prof is not None:
                prof.disable()
            self.cpu += time.process_time() - t0


class CorePair:
    """Two hosts and a lossless zero-delay path between them."""

    def __init__(self, config: Config, profile: str | None, step: float) -> None:
        self.client = Host(config, address=CLIENT, isn_key=b"c" * 16)
        self.server = Host(config, address=SERVER, isn_key=b"s" * 16)
        self.server.listen()
        self.sender = Meter(profile == "sender")
        self.receiver = Meter(profile == "receiver")
        self.now = 0.0
        self.step = step
        self.to_server: list[tuple[bytes, Address]] = []
        self.to_client: list[tuple[bytes, Address]] = []
        self.data_segments = 0
        self.acks = 0
        self.cconn = self.client.connect(SERVER, self.now)
        self.cconn.nodelay = self.cconn.config.nodelay
        self.sconn: Connection | None = None
        for _ in range(1000):
            self.exchange()
            if self.sconn is None:
                self.sconn = self.server.accept(SERVER[1])
            if self.sconn is not None and self.cconn.state is State.ESTABLISHED:
                break
        if self.sconn is None or self.cconn.state is not State.ESTABLISHED:
            raise RuntimeError("the handshake did not complete")
        self.data_segments = self.acks = 0

    def _side(self, host: Host, meter: Meter, inbox: list[tuple[bytes, Address]]) -> None:
        now = self.now
        for i in range(0, len(inbox), RECV_BATCH):
            meter.run(host.receive_datagrams, inbox[i : i + RECV_BATCH], now)
        inbox.clear()
        deadline = meter.run(host.next_timer)
        if deadline is not None and deadline <= now:
            meter.run(host.handle_timer, now)

    def exchange(self) -> None:
        """One step of virtual time: each host takes its input, fires due timers, and sends."""
        self.now += self.step
        self._side(self.client, self.sender, self.to_client)
        out = self.sender.run(self.client.datagrams_to_send, self.now)
        self.data_segments += sum(len(data) > HEADER_WITH_TS for data, _ in out)
        self.to_server.extend(out)
        self._side(self.server, self.receiver, self.to_server)
        out = self.receiver.run(self.server.datagrams_to_send, self.now)
        self.acks += sum(len(data) <= HEADER_WITH_TS for data, _ in out)
        self.to_client.extend(out)

    def app(
        self, host: Host, meter: Meter, conn: Connection, fn: Callable[..., T], *args: Any
    ) -> T:
        """An application call on ``conn``, charged to ``meter``, then reported to the host."""
        result = meter.run(fn, *args)
        host.touch(conn)
        return result


def core_bulk(args: argparse.Namespace, config: Config) -> tuple[dict[str, Any], CorePair]:
    pair = CorePair(config, args.profile, args.step)
    assert pair.sconn is not None
    cconn, sconn = pair.cconn, pair.sconn
    total = int(args.mb * 1e6)
    chunk = memoryview(bytes(65536))
    sent = received = 0
    wall = time.perf_counter()
    for _ in range(MAX_ROUNDS):
        while sent < total and cconn.send_space:
            sent += pair.app(pair.client, pair.sender, cconn, cconn.send, chunk[: total - sent])
        pair.exchange()
        while sconn.readable:
            received += len(
                pair.app(pair.server, pair.receiver, sconn, lambda: sconn.receive(1 << 20))
            )
        if received >= total:
            break
    else:
        raise RuntimeError("bulk did not finish")
    wall = time.perf_counter() - wall
    return result(pair, "core-bulk", total, wall), pair


def core_echo(args: argparse.Namespace, config: Config) -> tuple[dict[str, Any], CorePair]:
    pair = CorePair(config, args.profile, args.step)
    assert pair.sconn is not None
    cconn, sconn = pair.cconn, pair.sconn
    cconn.nodelay = sconn.nodelay = True  # what a UtcpStream sets
    msg = bytes(64)
    wall = time.perf_counter()
    rounds = 0
    for _ in range(args.count):
        pair.app(pair.client, pair.sender, cconn, cconn.send, msg)
        got = bytearray()
        for _ in range(1000):
            pair.exchange()
            rounds += 1
            if sconn.readable:
                data = pair.app(pair.server, pair.receiver, sconn, sconn.receive, 1 << 20)
                pair.app(pair.server, pair.receiver, sconn, sconn.send, data)
            if cconn.readable:
                got += pair.app(pair.client, pair.sender, cconn, cconn.receive, 1 << 20)
            if len(got) >= len(msg):
                break
        else:
            raise RuntimeError("echo did not come back")
    wall = time.perf_counter() - wall
    record = result(pair, "core-echo", args.count * len(msg), wall)
    record["round_trips"] = args.count
    record["cpu_us_per_round_trip"] = (pair.sender.cpu + pair.receiver.cpu) / args.count * 1e6
    record["exchanges_per_round_trip"] = rounds / args.count
    return record, pair


def result(pair: CorePair, name: str, nbytes: int, wall: float) -> dict[str, Any]:
    segs = max(1, pair.data_segments)
    return {
        "driver": name,
        "bytes": nbytes,
        "data_segments": pair.data_segments,
        "acks": pair.acks,
        "segments_per_ack": round(pair.data_segments / max(1, pair.acks), 2),
        "sender_cpu_s": round(pair.sender.cpu, 4),
        "receiver_cpu_s": round(pair.receiver.cpu, 4),
        "sender_us_per_segment": round(pair.sender.cpu / segs * 1e6, 2),
        "receiver_us_per_segment": round(pair.receiver.cpu / segs * 1e6, 2),
        "cpu_s_per_MB": round((pair.sender.cpu + pair.receiver.cpu) / (nbytes / 1e6), 4),
        "wall_s": round(wall, 3),
        "fast_path": _fastpath.ENABLED,
    }


async def socket_run(args: argparse.Namespace) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        serve = functools.partial(utcp.serve_tcp, host=loopback.HOST)
        listeners = await nursery.start(serve, loopback.serve_stream, 0)
        port = listeners[0].getsockname()[1]

        async def connect() -> trio.abc.HalfCloseableStream:
            return await utcp.open_tcp_stream(loopback.HOST, port)

        cpu0 = time.process_time()
        bulk = await loopback.stream_bulk(connect, int(args.mb * 1e6))
        bulk_cpu = time.process_time() - cpu0
        echo = await loopback.stream_echo(connect, args.count, max(10, args.count // 10))
        nursery.cancel_scope.cancel()
    return {
        "driver": "socket (one process, both ends)",
        "bulk_MB_s": round(bulk["MB_s"], 2),
        "bulk_cpu_s_per_MB": round(bulk_cpu / args.mb, 4),
        "echo_p50_us": round(echo["p50_us"], 1),
        "echo_p99_us": round(echo["p99_us"], 1),
        "echo_cpu_us_per_round_trip": round(echo["client_cpu_s"] / args.count * 1e6, 1),
    }


def print_profile(profiler: cProfile.Profile | None, title: str, top: int) -> None:
    """The ``top`` functions by internal time, with their internal and cumulative shares of
    the profiled time (a markdown table, as bench/README.md quotes it)."""
    if profiler is None:
        return
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])  # type: ignore[attr-defined]
    print(f"\n{title}: {total:.3f} s profiled\n")
    print("| function | calls | internal % | cumulative % |")
    print("|---|---|---|---|")
    for (path, line, name), (_, calls, tottime, cumtime, _) in rows[:top]:
        where = f"{Path(path).name}:{line}({name})" if line else name
        share, cumulative = 100 * tottime / total, 100 * cumtime / total
        print(f"| `{where}` | {calls} | {share:.1f} | {cumulative:.1f} |")


def conditions() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "commit": loopback.git_describe(),
        "compiled": loopback.compiled_core(),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("driver", choices=("core-bulk", "core-echo", "socket"))
    parser.add_argument("--mb", type=float, default=20.0, help="MB (10**6 B) for bulk")
    parser.add_argument("--count", type=int, default=2000, help="echo round trips")
    parser.add_argument("--step", type=float, default=1e-4, help="virtual s per exchange")
    parser.add_argument("--profile", choices=("sender", "receiver"), help="cProfile one side")
    parser.add_argument(
        "--fast-path", choices=("on", "off"), default="on", help="header prediction (_fastpath)"
    )
    parser.add_argument("--top", type=int, default=25, help="profile rows")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="Config override"
    )
    args = parser.parse_args(argv)
    if args.mb <= 0 or args.count < 1 or args.step <= 0:
        parser.error("--mb, --count and --step must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = Config(**loopback.config_overrides(args.set))
    _fastpath.ENABLED = args.fast_path == "on"
    if args.driver == "socket":
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            profiler.enable()
        record = trio.run(socket_run, args)
        if profiler is not None:
            profiler.disable()
        print(json.dumps({**record, "conditions": conditions()}))
        print_profile(profiler, "whole process", args.top)
        return 0
    run = core_bulk if args.driver == "core-bulk" else core_echo
    record, pair = run(args, config)
    print(json.dumps({**record, "conditions": conditions()}))
    print_profile(pair.sender.profiler, "sender side", args.top)
    print_profile(pair.receiver.profiler, "receiver side", args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
