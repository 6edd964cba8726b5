"""Issue 11's targets in one run: utcp beside its references on 127.0.0.1, every figure with
its conditions, as a markdown table and JSON.

Measured, in separate processes (each server is its own process, every measurement a fresh
client process; bench_loopback.py and bench_compare.py do the measuring):
  * bulk goodput of ``--bulk-mb`` MB one way: utcp with the MSS derived from the route MTU
    (65487 on loopback), utcp with ``mss=1452`` (what a real 1500-byte path gives), the
    naive trio UDP loop (one ``await sock.recv`` per datagram), kernel TCP through trio,
    and aioquic and KCP if installed (bench_compare.py's clients and servers);
  * 64-byte echo p50/p99 of utcp, kernel TCP through trio and a raw trio UDP ping-pong;
  * CPU per MB of the bulk runs, sender (client) and receiver (server), each process's
    own ``resource.getrusage`` (user + system) over the run;
  * multi-core: ``serve_tcp(..., reuse_port=True)`` in 1 and in 2 server processes on one
    UDP port, ``--mc-clients`` client processes at once: aggregate bulk goodput
    (``--mc-mb`` MB each, first start to last end) and serial handshakes per second
    (``--mc-handshakes`` each, every connection on a fresh UDP socket so the kernel's
    SO_REUSEPORT hash spreads them); the core count is printed beside it;
  * scale (``--scale-connections`` N > 0): bench_scale.py's server RSS with N connections,
    echo with N - 1 idle against none, handshakes per second.

    PYTHONPATH=. python bench/bench_targets.py           # about 1-3 minutes
    PYTHONPATH=. python bench/bench_targets.py --quick   # smaller, about 40 s

Output (stdout): one JSON line per measurement, one summary JSON line (``"kind":
"targets"``), then the markdown table. Progress goes to stderr. Exit status 0 if every
measurement completed (a target missed is a figure, not a failure).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_compare as compare
import bench_loopback as loopback

MB = loopback.MB
Json = dict[str, Any]
HERE = Path(__file__).resolve().parent


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def loopback_run(
    args: argparse.Namespace,
    systems: list[str],
    label: str,
    *extra: str,
    utcp_path: str | None = None,
) -> list[Json]:
    """One bench_loopback.py round of ``systems``; utcp records renamed ``label``.
    ``utcp_path``: another build of utcp to measure (UTCP_BENCH_PATH)."""
    cmd = [sys.executable, str(HERE / "bench_loopback.py"), "--rounds", "1", "--systems"]
    cmd += [*systems, "--bulk-mb", str(args.bulk_mb), "--echo-count", str(args.echo_count)]
    cmd += ["--timeout", str(args.timeout), *extra]
    limit = 2 * len(systems) * (args.timeout + 30) + 60
    env = dict(os.environ)
    env.pop("UTCP_BENCH_PATH", None)
    if utcp_path is not None:
        env["UTCP_BENCH_PATH"] = utcp_path
    try:
        done = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=limit, env=env
        )
        lines = done.stdout.splitlines()
    except subprocess.TimeoutExpired:
        lines = []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("kind") == "measurement":
            record.pop("conditions", None)
            if record["system"] == "utcp":
                record["system"] = label
            out.append(record)
    return out


def compare_run(args: argparse.Namespace, system: str) -> list[Json]:
    """bench_compare.py's bulk and echo for ``system`` (quic or kcp), its own server."""
    reason = compare.available(system)
    if reason is not None:
        log(f"skipping {system}: {reason}")
        return []
    cargs = argparse.Namespace(
        timeout=args.timeout, bulk_bytes=int(args.bulk_mb * MB), echo_count=args.echo_count
    )
    server = compare.Server(system)
    try:
        return [
            {
                "kind": "measurement",
                "system": system,
                "test": test,
                **compare.run_client(server, test, cargs),
            }
            for test in ("bulk", "echo")
        ]
    finally:
        server.stop()


def client_cmd(port: int, test: str, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, str(HERE / "bench_loopback.py"), "--role", "client", "--system"]
    cmd += ["utcp", "--port", str(port), "--test", test, "--timeout", str(args.timeout)]
    return [*cmd, "--bulk-mb", str(args.mc_mb), "--handshakes", str(args.mc_handshakes)]


def multi_core(args: argparse.Namespace, processes: int) -> Json:
    """``processes`` utcp servers on one port (SO_REUSEPORT), ``--mc-clients`` clients at
    once: aggregate bulk goodput, then aggregate serial handshake rate."""
    servers: list[loopback.Server] = []
    result: Json = {"server_processes": processes, "clients": args.mc_clients}
    try:
        first = loopback.Server("utcp", ["--reuse-port"], None)
        servers.append(first)
        for _ in range(processes - 1):
            more = ["--reuse-port", "--port", str(first.port)]  # the last --port wins
            servers.append(loopback.Server("utcp", more, None))
        for test in ("bulk", "handshake"):
            cpu0 = [s.query() for s in servers]
            procs = [
                subprocess.Popen(
                    client_cmd(first.port, test, args),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for _ in range(args.mc_clients)
            ]
            records = []
            for proc in procs:
                out, _ = proc.communicate(timeout=args.timeout + 30)
                records.append(json.loads(out.strip().splitlines()[-1]))
            cpu1 = [s.query() for s in servers]
            errors = [r["error"] for r in records if "error" in r]
            if errors:
                result[f"{test}_error"] = errors[0]
                continue
            span = max(r["t_end"] for r in records) - min(r["t_start"] for r in records)
            # How the kernel spread the work: each server process's CPU seconds.
            spread = [
                round(b["cpu_s"] - a["cpu_s"], 3) if a and b else None
                for a, b in zip(cpu0, cpu1, strict=True)
            ]
            if test == "bulk":
                result["aggregate_MB_s"] = sum(r["bytes"] for r in records) / span / MB
                result["bulk_server_cpu_s"] = spread
            else:
                result["handshakes_per_s"] = sum(r["handshakes"] for r in records) / span
                result["handshake_server_cpu_s"] = spread
    finally:
        for server in servers:
            server.stop()
    return result


def scale_run(args: argparse.Namespace) -> Json | None:
    cmd = [
        sys.executable,
        str(HERE / "bench_scale.py"),
        "--connections",
        str(args.scale_connections),
    ]
    try:
        done = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600
        )
    except subprocess.TimeoutExpired:
        return {"error": "bench_scale.py timed out"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            record: Json = json.loads(line)
            return record
    return {"error": f"bench_scale.py exited {done.returncode}: {done.stderr[-500:]}"}


def find(records: list[Json], system: str, test: str) -> Json:
    for r in records:
        if r.get("system") == system and r.get("test") == test and "error" not in r:
            return r
    return {}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{suffix}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT met")


def cpu_per_mb(record: Json, side: str) -> float | None:
    """CPU milliseconds per MB moved by the ``side`` ("client" or "server") process."""
    cpu = record.get(f"{side}_cpu_s")
    nbytes = record.get("bytes")
    return None if cpu is None or not nbytes else cpu * 1000 / (nbytes / MB)


# The utcp builds a run may measure: label, its MSS-1452 label, and the suffix of its rows.
VARIANTS = (("utcp", "utcp-1452", ""), ("utcp-compiled", "utcp-compiled-1452", " (compiled core)"))


def targets(records: list[Json], mc: list[Json], scale: Json | None) -> tuple[list[Json], str]:
    """The target rows (JSON) and the markdown table."""
    systems = ("udp", "kernel", "quic", "kcp", *(v for pair in VARIANTS for v in pair[:2]))
    bulk = {s: find(records, s, "bulk") for s in systems}
    echo = {s: find(records, s, "echo") for s in systems}
    mbs = {s: r.get("MB_s") for s, r in bulk.items()}
    rows: list[Json] = []

    def row(target: str, condition: str, utcp_value: str, reference: str, ok: bool | None) -> None:
        rows.append(
            {
                "target": target,
                "conditions": condition,
                "utcp": utcp_value,
                "reference": reference,
                "verdict": verdict(ok),
            }
        )

    def per_mb(system: str, digits: int) -> str:
        r = bulk[system]
        return f"{fmt(cpu_per_mb(r, 'client'), digits)} / {fmt(cpu_per_mb(r, 'server'), digits)}"

    for name, name_1452, build in VARIANTS:
        if not bulk[name] and not echo[name]:
            continue  # that build was not measured
        u = mbs[name]
        row(
            f"bulk >= 150 MB/s{build}",
            "1 connection, client and server processes, MSS from the route MTU",
            fmt(u, 1, " MB/s") + f" (MSS 1452: {fmt(mbs[name_1452], 1, ' MB/s')})",
            f"kernel TCP {fmt(mbs['kernel'], 0, ' MB/s')}, KCP {fmt(mbs['kcp'], 0, ' MB/s')}",
            None if u is None else u >= 150,
        )
        q = ratio(u, mbs["quic"])
        row(
            f"bulk >= 5x aioquic{build}",
            "aioquic defaults, 1 stream",
            fmt(q, 2, "x"),
            f"aioquic {fmt(mbs['quic'], 1, ' MB/s')}",
            None if q is None else q >= 5,
        )
        n = ratio(u, mbs["udp"])
        row(
            f"bulk above the naive trio UDP ceiling{build}",
            "1400-byte datagrams, one await sock.recv each",
            fmt(n, 2, "x") + f" (MSS 1452: {fmt(ratio(mbs[name_1452], mbs['udp']), 2, 'x')})",
            f"naive UDP {fmt(mbs['udp'], 1, ' MB/s')}",
            None if n is None else n > 1,
        )
        for pct, limit in (("p50", 1.3), ("p99", 2.0)):
            key = f"{pct}_us"
            mine, kernel, udp = (echo[s].get(key) for s in (name, "kernel", "udp"))
            over_kernel = ratio(mine, kernel)
            row(
                f"echo {pct} <= {limit}x kernel TCP{build}",
                "64 B ping-pong, 1 connection, nodelay",
                f"{fmt(mine, 0, ' us')} ({fmt(over_kernel, 2, 'x')})",
                f"kernel {fmt(kernel, 0, ' us')}, raw UDP {fmt(udp, 0, ' us')} "
                f"(utcp/UDP {fmt(ratio(mine, udp), 2, 'x')})",
                None if over_kernel is None else over_kernel <= limit,
            )
        for system in (name, name_1452):
            row(
                f"CPU per MB ({system})",
                "bulk run, getrusage of each process, sender / receiver",
                f"{per_mb(system, 1)} ms/MB",
                f"kernel TCP {per_mb('kernel', 2)}, naive UDP {per_mb('udp', 1)} ms/MB",
                None,
            )
    by_n = {m["server_processes"]: m for m in mc}
    if 1 in by_n and 2 in by_n:
        one, two = by_n[1], by_n[2]

        def change(key: str, digits: int) -> str:
            return f"{fmt(one.get(key), digits)} -> {fmt(two.get(key), digits)}"

        row(
            "multi-core: SO_REUSEPORT, 1 -> 2 server processes",
            f"{one['clients']} client processes at once, {os.cpu_count()} cores",
            f"{change('aggregate_MB_s', 1)} MB/s; {change('handshakes_per_s', 0)} handshakes/s",
            "server CPU s per process (bulk): "
            f"{one.get('bulk_server_cpu_s')} -> {two.get('bulk_server_cpu_s')}",
            None,
        )
    if scale is not None and "error" not in scale:
        res = scale.get("result", {})
        n_conn = scale.get("conditions", {}).get("connections")
        rss = res.get("server_rss_mb")
        idle = res.get("echo_p50_ratio")
        row(
            "scale: RSS < 200 MB, idle echo <= 1.2x",
            f"{n_conn} connections on one server endpoint (bench_scale.py)",
            f"RSS {fmt(rss, 1, ' MB')}, echo p50 idle N-1 / none {fmt(idle, 2, 'x')}",
            f"handshakes/s serial {fmt(res.get('handshakes_per_s_serial'), 0)}, "
            f"parallel {fmt(res.get('handshakes_per_s_parallel'), 0)}",
            None if rss is None or idle is None else rss < 200 and idle <= 1.2,
        )
    lines = ["| target | conditions | utcp | references | verdict |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['target']} | {r['conditions']} | {r['utcp']} | {r['reference']} | {r['verdict']} |"
        for r in rows
    ]
    return rows, "\n".join(lines)


def conditions(args: argparse.Namespace) -> Json:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "utcp_tree": loopback.git_describe(),
        "bulk_mb": args.bulk_mb,
        "echo_count": args.echo_count,
        "rounds": args.rounds,
        "offload_env": os.environ.get("UTCP_UDP_OFFLOAD"),
        "compiled_core_dir": args.compiled,  # "utcp-compiled" rows: bench/build_compiled.py
        "loadavg_at_start": list(os.getloadavg()),
    }


def median_records(rounds: list[list[Json]]) -> list[Json]:
    """Per (system, test), the record of the median round (by MB/s or p50)."""
    groups: dict[tuple[str, str], list[Json]] = {}
    for records in rounds:
        for r in records:
            if "error" not in r:
                groups.setdefault((r["system"], r["test"]), []).append(r)
    out = []
    for (_system, test), group in groups.items():
        key = "MB_s" if test == "bulk" else "p50_us"
        group.sort(key=lambda r: r.get(key) or 0.0)
        out.append(group[(len(group) - 1) // 2] if len(group) % 2 == 0 else group[len(group) // 2])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="10 MB, 300 echoes, smaller multi-core"
    )
    parser.add_argument("--bulk-mb", type=float, default=30.0)
    parser.add_argument("--echo-count", type=int, default=1000)
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds; the median round is reported"
    )
    parser.add_argument("--mc-clients", type=int, default=4)
    parser.add_argument("--mc-mb", type=float, default=10.0)
    parser.add_argument("--mc-handshakes", type=int, default=100)
    parser.add_argument("--scale-connections", type=int, default=0, help="0: skip bench_scale")
    parser.add_argument("--no-compare", action="store_true", help="skip aioquic and KCP")
    parser.add_argument(
        "--compiled",
        metavar="DIR",
        help="also measure the compiled core built into DIR by bench/build_compiled.py",
    )
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.bulk_mb, args.echo_count, args.mc_mb, args.mc_handshakes = 10.0, 300, 4.0, 50
    cond = conditions(args)
    started = time.perf_counter()
    rounds: list[list[Json]] = []
    failures = 0
    for rnd in range(1, args.rounds + 1):
        records = loopback_run(args, ["utcp", "kernel", "udp"], "utcp")
        records += loopback_run(args, ["utcp"], "utcp-1452", "--utcp-set", "mss=1452")
        if args.compiled:
            records += loopback_run(args, ["utcp"], "utcp-compiled", utcp_path=args.compiled)
            records += loopback_run(
                args,
                ["utcp"],
                "utcp-compiled-1452",
                "--utcp-set",
                "mss=1452",
                utcp_path=args.compiled,
            )
        if not args.no_compare:
            for system in ("quic", "kcp"):
                records += compare_run(args, system)
        for r in records:
            r["round"] = rnd
            failures += "error" in r
            loopback.emit(r)
            log(f"round {rnd} {r['system']} {r['test']}: {loopback.describe(r)}")
        rounds.append(records)
    mc = []
    for processes in (1, 2):
        m = multi_core(args, processes)
        failures += any(k.endswith("_error") for k in m)
        loopback.emit({"kind": "multi_core", **m})
        log(f"multi-core {processes} server process(es): {m}")
        mc.append(m)
    scale = scale_run(args) if args.scale_connections > 0 else None
    if scale is not None:
        failures += "error" in scale
        loopback.emit({"kind": "scale", **scale})
    rows, table = targets(median_records(rounds), mc, scale)
    cond["loadavg_at_end"] = list(os.getloadavg())
    cond["bench_seconds"] = round(time.perf_counter() - started, 1)
    loopback.emit({"kind": "targets", "rows": rows, "failures": failures, "conditions": cond})
    print()
    print(f"conditions: {json.dumps(cond)}")
    print()
    print(table)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
