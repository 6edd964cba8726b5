"""Where one 64-byte echo's time goes inside the server process, utcp beside kernel TCP.

The server runs in its own process with a trio instrument that timestamps every I/O wait
and every task step. For each echoed message it takes the time from the end of the blocking
wait that brought the request (the process waking up) to the return of the handler's
``send_all`` (the reply is with the kernel by then; both stacks yield once after sending, so
both figures include that one scheduler pass), and counts the scheduler passes and task steps
in between. Per task it reports the median step duration: utcp has two tasks per message
(the endpoint's I/O task reads the datagram and runs the core, then the handler), kernel TCP
one. The client, in this process, prints the round trip as seen from outside.

    python bench/echo_timeline.py                       # utcp and kernel TCP, 3,000 echoes
    python bench/echo_timeline.py --systems utcp --count 10000
    UTCP_BENCH_PATH=build/compiled python bench/echo_timeline.py   # the compiled core

The instrument costs a few microseconds per step, the same for both stacks. Figures on an
idle machine only; bench/README.md ("Where the echo's time goes") has the latest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from bisect import bisect_right
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.common
# UTCP_BENCH_PATH: another build of utcp to measure (bench/build_compiled.py), ahead of
# this tree's.
if os.environ.get("UTCP_BENCH_PATH"):
    sys.path.insert(0, os.path.abspath(os.environ["UTCP_BENCH_PATH"]))

import trio

import utcp
from bench.common import (
    Json,
    compiled_core,
    emit,
    git_describe,
    loadavg,
    percentile,
    read_line,
    receive_exactly,
    stop_process,
    watch_parent,
)

ECHO_SIZE = 64
HOST = "127.0.0.1"


def _label(task: trio.lowlevel.Task) -> str:
    if task.name.startswith("utcp endpoint"):
        return "utcp I/O task"
    if task.name.endswith("_run_handler"):
        return "handler"
    return "other"


class Timeline(trio.abc.Instrument):
    """Timestamps of the server's scheduler: blocking wake-ups, passes and task steps."""

    def __init__(self) -> None:
        self.wakes: list[int] = []  # end of each blocking I/O wait (ns)
        self.passes: list[int] = []  # end of every I/O wait, blocking or not (ns)
        self.step_starts: list[int] = []
        self.steps: dict[str, list[int]] = {}
        self._step_start = 0

    def after_io_wait(self, timeout: float) -> None:
        now = time.perf_counter_ns()
        self.passes.append(now)
        if timeout > 0:
            self.wakes.append(now)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._step_start = time.perf_counter_ns()
        self.step_starts.append(self._step_start)

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps.setdefault(_label(task), []).append(time.perf_counter_ns() - self._step_start)


def _count_between(times: list[int], start: int, end: int) -> int:
    return bisect_right(times, end) - bisect_right(times, start)


def analyse(timeline: Timeline, sends: list[int], cpu: list[float], warmup: int) -> Json:
    """Per measured message (after ``warmup``): wake -> send, passes and steps between."""
    wake_to_send: list[float] = []
    passes: list[int] = []
    steps: list[int] = []
    for sent in sends[warmup:]:
        i = bisect_right(timeline.wakes, sent) - 1
        if i < 0:
            continue
        woke = timeline.wakes[i]
        wake_to_send.append((sent - woke) / 1000)
        passes.append(_count_between(timeline.passes, woke - 1, sent))
        steps.append(_count_between(timeline.step_starts, woke, sent))
    wake_to_send.sort()
    messages = len(wake_to_send)
    step_p50 = {
        label: percentile(sorted(d / 1000 for d in durations), 0.5)
        for label, durations in sorted(timeline.steps.items())
        if label != "other"
    }
    return {
        "messages": messages,
        "wake_to_send_p50_us": percentile(wake_to_send, 0.5) if messages else None,
        "wake_to_send_p90_us": percentile(wake_to_send, 0.9) if messages else None,
        "passes_per_message": sum(passes) / messages if messages else None,
        "steps_per_message": sum(steps) / messages if messages else None,
        "step_p50_us": step_p50,
        "server_compiled_core": compiled_core(),
        "cpu_us_per_message": (cpu[-1] - cpu[0]) / max(1, len(cpu) - 1) * 1e6
        if len(cpu) > 1
        else None,
    }


async def serve(system: str, warmup: int) -> Json:
    """Echo server: prints its port, serves until stdin closes, returns the analysis."""
    timeline = Timeline()
    trio.lowlevel.add_instrument(timeline)
    sends: list[int] = []
    cpu: list[float] = []

    async def handler(stream: trio.abc.HalfCloseableStream) -> None:
        async with stream:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
                sends.append(time.perf_counter_ns())
                if len(sends) >= warmup:
                    cpu.append(time.process_time())

    async with trio.open_nursery() as nursery:
        if system == "utcp":
            listeners = await nursery.start(utcp.serve_tcp, handler, 0)
            port = listeners[0].getsockname()[1]
        else:
            kernel = await nursery.start(trio.serve_tcp, handler, 0)
            port = kernel[0].socket.getsockname()[1]
        print(port, flush=True)
        await watch_parent(nursery)
    trio.lowlevel.remove_instrument(timeline)
    return analyse(timeline, sends, cpu, warmup)


async def client(system: str, port: int, count: int, warmup: int, timeout: float) -> Json:
    with trio.fail_after(timeout):
        return await _echoes(system, port, count, warmup)


async def _echoes(system: str, port: int, count: int, warmup: int) -> Json:
    connect = utcp.open_tcp_stream if system == "utcp" else trio.open_tcp_stream
    stream = await connect(HOST, port)
    rtts: list[float] = []
    async with stream:
        for i in range(warmup + count):
            msg = i.to_bytes(8, "big") * (ECHO_SIZE // 8)
            t0 = time.perf_counter_ns()
            await stream.send_all(msg)
            if await receive_exactly(stream, ECHO_SIZE) != msg:
                raise RuntimeError(f"echo #{i} came back different")
            if i >= warmup:
                rtts.append((time.perf_counter_ns() - t0) / 1000)
    rtts.sort()
    return {"round_trips": len(rtts), "client_p50_us": percentile(rtts, 0.5)}


def measure(system: str, count: int, warmup: int, timeout: float) -> Json:
    cmd = [sys.executable, os.path.abspath(__file__), "--serve", system, "--warmup", str(warmup)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = read_line(proc.stdout, timeout)
        if not line.strip():
            raise RuntimeError(f"{system} server did not start")
        record = trio.run(client, system, int(line), count, warmup, timeout)
        proc.stdin.close()  # the server's watch_parent ends it; it prints its analysis
        report = read_line(proc.stdout, timeout)
        if not report.strip():
            raise RuntimeError(f"{system} server printed no analysis")
        record.update(json.loads(report))
    finally:
        stop_process(proc)
    return record


def table(records: list[Json]) -> str:
    lines = [
        "| system | client RT p50 us | server wake -> send p50 / p90 us | passes / message "
        "| steps / message | step p50 us | server CPU us / message |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in records:
        steps = ", ".join(f"{k} {v:.1f}" for k, v in r["step_p50_us"].items())
        lines.append(
            f"| {r['system']} | {r['client_p50_us']:.0f} | {r['wake_to_send_p50_us']:.0f} / "
            f"{r['wake_to_send_p90_us']:.0f} | {r['passes_per_message']:.2f} | "
            f"{r['steps_per_message']:.2f} | {steps} | {r['cpu_us_per_message']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--systems", nargs="+", choices=("utcp", "kernel"), default=["utcp", "kernel"]
    )
    parser.add_argument("--count", type=int, default=3000, help="measured echoes")
    parser.add_argument("--warmup", type=int, default=200, help="echoes not counted")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per system")
    parser.add_argument("--serve", choices=("utcp", "kernel"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        print(json.dumps(trio.run(serve, args.serve, args.warmup)), flush=True)
        return 0
    conditions: Json = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "utcp_tree": git_describe(),
        "utcp_compiled": compiled_core(),
        "loadavg_at_start": loadavg(),
        "count": args.count,
        "warmup": args.warmup,
    }
    records = []
    for system in args.systems:
        record = {"system": system, **measure(system, args.count, args.warmup, args.timeout)}
        record["conditions"] = conditions
        emit(record)
        records.append(record)
    print()
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
