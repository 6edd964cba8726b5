"""``python -m bench``: utcp beside kernel TCP (and the raw UDP floor) on emulated links.

For each scenario (a netem spec applied per direction, see ``bench.scenarios``) the harness
opens the link (``bench.netem.link.open_link``: real netem, the userspace emulator between
two network namespaces, or, without root, a UDP impairment proxy), starts one server per
stack in the server host and runs that stack's client in the client host
(``bench.workloads``), utcp and kernel TCP on the same link in the same run. The
``loopback`` scenario runs on 127.0.0.1 with no link, and adds aioquic (through
``bench_compare.py``) when it is installed.

Outputs in ``--out``: ``results.jsonl`` (the conditions, every measurement, every link
report), ``results.md`` (a table per scenario with utcp/kernel ratios) and ``plots/*.png``
(latency CDFs per scenario, goodput vs loss per RTT; needs matplotlib, the ``bench``
extra). Each group of tests runs on a link of its own; a figure whose link report is
invalid (the emulator near its ceiling, or its timing off) is flagged in the table and
left out of the plots, not reported as a result.

    sudo .venv/bin/python -m bench --quick --out /tmp/bench-quick    # under 2 minutes
    sudo .venv/bin/python -m bench --out /tmp/bench                  # the "full" group
    sudo .venv/bin/python -m bench --scenarios rtt-loss --out /tmp/sweep
    .venv/bin/python -m bench --scenarios "delay 40ms loss 3%" --mode proxy --out /tmp/p
    .venv/bin/python -m bench --render --out /tmp/bench      # redo results.md and plots/
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, cast

import trio

import utcp

from . import report
from .common import ROOT, Json, cpu_model, git_describe, loadavg, read_line, stop_process
from .netem.link import LinkUnavailable, Mode, open_link
from .scenarios import GROUPS, SCENARIOS, Scenario, resolve
from .workloads import Params, time_bound

MODES = ("auto", "netem", "emulated", "proxy")
UTCP_CCS = ("cubic", "newreno", "ledbat")
# Kernel TCP runs CUBIC, utcp's default controller, whatever the system default is (BBR on
# some machines, this one included): like for like, and Linux's own default.
KERNEL_CC = "cubic"
QUIC_TESTS = ("bulk", "echo64")
KERNEL_NEEDS_ROOT = (
    "kernel TCP comparisons need root (network namespaces joined by netem or the emulator); "
    "this run measures utcp and raw UDP through the UDP proxy only"
)


@dataclasses.dataclass(frozen=True)
class Profile:
    """How big each measurement is: ``quick`` (CI-sized) or ``full``."""

    name: str
    params: Params
    bulk_tests: tuple[str, ...]
    loopback_bulk: str
    quic_bulk_mb: float
    link_per_group: bool  # a fresh link per group of tests (see units), else one per stack


QUICK = Profile(
    "quick",
    Params(
        setup_count=3,
        echo_count=100,
        echo_seconds=1.5,
        msg_count=3,
        msg_seconds=1.5,
        bulk_seconds={"bulk1": 2.0},
        parallel=2,
        parallel_seconds=1.5,
        load_seconds=1.5,
        load_warmup=0.3,
        blast_seconds=1.0,
    ),
    bulk_tests=("bulk1",),
    loopback_bulk="bulk1",
    quic_bulk_mb=1.0,
    link_per_group=False,
)
FULL = Profile(
    "full",
    # Sized so the default group (loopback and six emulated scenarios) takes about 15
    # minutes on 2 busy cores (17 with the burst scenario's 30 s connection timeouts):
    # every transfer is bounded by time, not by its size.
    Params(
        setup_count=8,
        echo_count=500,
        echo_seconds=3.0,
        msg_count=10,
        msg_seconds=3.0,
        bulk_seconds={"bulk1": 2.0, "bulk10": 3.0, "bulk100": 4.0},
        parallel=4,
        parallel_seconds=3.0,
        load_seconds=3.5,
        load_warmup=0.7,
        blast_seconds=1.5,
    ),
    bulk_tests=("bulk1", "bulk10", "bulk100"),
    loopback_bulk="bulk10",
    quic_bulk_mb=10.0,
    link_per_group=True,
)


def stream_tests(profile: Profile, stack: str) -> list[str]:
    """What a stream stack runs on an emulated link, in order."""
    ccs = UTCP_CCS if stack == "utcp" else ("kernel",)
    return [
        "setup",
        "echo64",
        "echo4k",
        "msg100k",
        *profile.bulk_tests,
        "parallel",
        *(f"underload_{cc}" for cc in ccs),
    ]


def planned_tests(profile: Profile, scenario: Scenario, stack: str) -> list[str]:
    """Every test of ``stack`` in ``scenario`` (what a complete result file holds)."""
    if scenario.spec is None:
        if stack == "quic":
            return list(QUIC_TESTS)
        return ["blast" if stack == "udp" else profile.loopback_bulk, "echo64"]
    if stack == "udp":
        return ["echo64", "blast"]
    return stream_tests(profile, stack)


# ================================================================= links


class LinkLike(Protocol):
    """What the harness uses of ``bench.netem.link``'s link object."""

    mode: str
    server_host: str
    client_connect_host: str

    def client_cmd(self, argv: list[str]) -> list[str]: ...

    def server_cmd(self, argv: list[str]) -> list[str]: ...

    def port_for_client(self, server_port: int) -> int: ...


class Loopback:
    """The loopback scenario's stand-in for a link: both ends on 127.0.0.1, no impairment."""

    mode = "loopback"
    server_host = "127.0.0.1"
    client_connect_host = "127.0.0.1"

    def client_cmd(self, argv: list[str]) -> list[str]:
        return argv

    def server_cmd(self, argv: list[str]) -> list[str]:
        return argv

    def port_for_client(self, server_port: int) -> int:
        return server_port


# ================================================================= processes


class Server:
    """One workload server process; ``stop()`` ends it by PID."""

    def __init__(self, cmd: list[str], what: str) -> None:
        self.what = what
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.pid = self.proc.pid
        stdout = self.proc.stdout
        assert stdout is not None
        hello = read_line(stdout, 30.0)
        if not hello.strip():
            self.stop()
            raise RuntimeError(f"{what} server (pid {self.pid}) did not report its port")
        self.port = int(json.loads(hello)["port"])

    def stop(self) -> None:
        stop_process(self.proc)


def workload_cmd(role: str, stack: str, host: str, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "bench.workloads", role, "--stack", stack, "--host", host]
    return [*cmd, "--kernel-cc", KERNEL_CC, *extra]


def run_stack(link: LinkLike, stack: str, tests: list[str], params: Params) -> list[Json]:
    """Start ``stack``'s server in the server host, run its client in the client host;
    one record per test (an error record for each test that gave none)."""
    records: list[Json] = []
    try:
        server = Server(link.server_cmd(workload_cmd("server", stack, link.server_host)), stack)
    except (OSError, RuntimeError) as exc:
        return [{"test": t, "stack": stack, "error": f"server: {exc}"} for t in tests]
    try:
        port = link.port_for_client(server.port)
        cmd = workload_cmd(
            "client",
            stack,
            link.client_connect_host,
            "--port",
            str(port),
            "--tcp-port",
            str(server.port),
            "--tests",
            ",".join(tests),
            "--params",
            json.dumps(dataclasses.asdict(params)),
        )
        limit = sum(time_bound(t, params) for t in tests) + 30
        try:
            done = subprocess.run(
                link.client_cmd(cmd),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=limit,
            )
            stdout, stderr = done.stdout, done.stderr
        except subprocess.TimeoutExpired as exc:
            stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            stderr = f"client killed after {limit:.0f} s"
        for line in stdout.splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if isinstance(record, dict) and "test" in record:
                    records.append(record)
    finally:
        server.stop()
    seen = {r["test"] for r in records}
    for test in tests:
        if test not in seen:
            records.append(
                {"test": test, "stack": stack, "error": f"no result: {stderr.strip()[-1500:]}"}
            )
    return records


def run_quic(profile: Profile, params: Params) -> list[Json]:
    """aioquic on 127.0.0.1 through ``bench_compare.py`` (bulk of ``quic_bulk_mb`` MB and
    64 B echoes), its records in this harness's shape; [] when aioquic is not installed."""
    try:
        metadata.version("aioquic")
    except metadata.PackageNotFoundError:
        return []
    cmd = [sys.executable, str(ROOT / "bench" / "bench_compare.py"), "--loopback"]
    cmd += ["--others", "quic", "--rounds", "1", "--bulk-mb", str(profile.quic_bulk_mb)]
    cmd += ["--echo-count", str(params.echo_count), "--timeout", "60"]
    records: list[Json] = []
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=200
        )
        lines = done.stdout.splitlines()
    except subprocess.TimeoutExpired:
        lines = []
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError):
            r = json.loads(line)
            if r.get("kind") != "measurement" or r.get("system") != "quic":
                continue
            if "error" in r:
                records.append({"test": r["test"], "stack": "quic", "error": r["error"]})
            elif r["test"] == "bulk":
                mbit = r["bytes"] * 8 / r["seconds"] / 1e6
                records.append(
                    {"test": "bulk", "stack": "quic", "bytes": r["bytes"], "seconds": r["seconds"]}
                    | {"MB_s": r["MB_s"], "Mbit_s": mbit, "complete": True}
                )
            else:
                records.append(
                    {"test": "echo64", "stack": "quic", "n": r["round_trips"]}
                    | {"p50_ms": r["p50_us"] / 1e3, "p99_ms": r["p99_us"] / 1e3}
                )
    seen = {r["test"] for r in records}
    for test in QUIC_TESTS:
        if test not in seen:
            records.append({"test": test, "stack": "quic", "error": "bench_compare gave no result"})
    return records


# ================================================================= scenarios


@contextlib.contextmanager
def open_scenario_link(scenario: Scenario, mode: str) -> Iterator[Any]:
    if scenario.spec is None:
        yield Loopback()
        return
    with open_link(spec=scenario.spec, reverse_spec=None, mode=cast(Mode, mode)) as link:
        yield link


def units(profile: Profile, scenario: Scenario, stack: str) -> list[list[str]]:
    """``stack``'s tests grouped by the link they run on: each group gets a fresh link, so
    the link report (and its validity) covers just that group. The light latency tests
    share one; each bulk, parallel and under-load test, which can load the emulator up to
    its ceiling, has its own. The quick profile uses one link per stack (fewer links to
    make, coarser verdicts)."""
    tests = planned_tests(profile, scenario, stack)
    if scenario.spec is None or not profile.link_per_group:
        return [tests]
    light = ("setup", "echo64", "echo4k", "msg100k")
    grouped = [[t for t in tests if t in light]]
    grouped += [[t] for t in tests if t not in light]
    return [g for g in grouped if g]


def link_mode(requested: str) -> str:
    """The mode ``open_link`` picks for ``requested`` here (``auto`` resolved once, so every
    scenario of a run uses the same kind of link)."""
    with open_link(spec="", reverse_spec=None, mode=cast(Mode, requested)) as link:
        return str(link.mode)


def run_unit(
    scenario: Scenario, stack: str, tests: list[str], params: Params, mode: str
) -> tuple[list[Json], Json]:
    """One group of tests of one stack on a link of its own; the measurement records (each
    carrying the link's verdict) and the link record."""
    link_record: Json = {
        "kind": "link",
        "scenario": scenario.name,
        "spec": scenario.spec,
        "stack": stack,
        "tests": tests,
        "mode": "loopback" if scenario.spec is None else mode,
        "loadavg_start": loadavg(),
    }
    t0 = time.monotonic()
    records: list[Json] = []
    try:
        with open_scenario_link(scenario, mode) as link:
            records = run_stack(link, stack, tests, params)
            if scenario.spec is None:
                verdict: Json = {"valid": True, "invalid_reason": None}
            else:
                verdict = link.report().to_dict()
    except (LinkUnavailable, OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
        verdict = {"valid": False, "invalid_reason": f"link failed: {exc}"}
        link_record["error"] = repr(exc)
        seen = {r["test"] for r in records}
        records += [
            {"test": t, "stack": stack, "error": f"link: {exc!r}"} for t in tests if t not in seen
        ]
    link_record["report"] = verdict
    link_record["seconds"] = time.monotonic() - t0
    link_record["loadavg_end"] = loadavg()
    for record in records:
        record["link_valid"] = bool(verdict.get("valid"))
        record["link_invalid_reason"] = verdict.get("invalid_reason")
    return records, link_record


def run_scenario(
    scenario: Scenario, profile: Profile, mode: str, out: Any, log: Any
) -> tuple[list[Json], list[Json]]:
    """Every stack of one scenario: its measurement records and link records."""
    params = dataclasses.replace(profile.params, base_rtt=scenario.base_rtt)
    records: list[Json] = []
    links: list[Json] = []

    def keep(record: Json) -> None:
        record = {"kind": "measurement", "scenario": scenario.name, **record}
        records.append(record)
        out.write(json.dumps(record) + "\n")
        out.flush()
        flag = "" if record.get("link_valid", True) else " [link INVALID]"
        print(f"    {report.describe(record)}{flag}", file=log, flush=True)

    stacks = ["utcp", "kernel", "udp"]
    if scenario.spec is not None and mode == "proxy":
        stacks.remove("kernel")
        print(f"  {KERNEL_NEEDS_ROOT}", file=log)
    for stack in stacks:
        for tests in units(profile, scenario, stack):
            print(f"  {stack}: {', '.join(tests)}", file=log, flush=True)
            unit_records, link_record = run_unit(scenario, stack, tests, params, mode)
            for record in unit_records:
                keep(record)
            links.append(link_record)
            out.write(json.dumps(link_record) + "\n")
            rep = link_record["report"]
            if not rep.get("valid"):
                print(f"    link invalid: {rep.get('invalid_reason')}", file=log, flush=True)
    if scenario.spec is None:
        for record in run_quic(profile, params):
            keep({**record, "link_valid": True, "link_invalid_reason": None})
    return records, links


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def conditions(args: argparse.Namespace, profile: Profile, scenarios: list[Scenario]) -> Json:
    cc_file = Path("/proc/sys/net/ipv4/tcp_congestion_control")
    return {
        "kind": "conditions",
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "utcp_tree": git_describe(),
        "utcp": utcp.__version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "trio": trio.__version__,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "loadavg_start": loadavg(),
        "root": hasattr(os, "geteuid") and os.geteuid() == 0,
        "requested_mode": args.mode,
        "kernel_tcp_cc": KERNEL_CC,
        "kernel_tcp_cc_system_default": cc_file.read_text().strip() if cc_file.exists() else None,
        "packages": {n: package_version(n) for n in ("aioquic", "matplotlib")},
        "profile": profile.name,
        "params": dataclasses.asdict(profile.params),
        "bulk_tests": list(profile.bulk_tests),
        "loopback_bulk": profile.loopback_bulk,
        "utcp_ccs": list(UTCP_CCS),
        "scenarios": [{"name": s.name, "spec": s.spec} for s in scenarios],
    }


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "scenario"


def run(args: argparse.Namespace) -> int:
    profile = QUICK if args.quick else FULL
    items = args.scenarios or (["quick"] if args.quick else ["full"])
    scenarios = resolve(items)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = sys.stderr
    cond = conditions(args, profile, scenarios)
    needs_link = any(s.spec is not None for s in scenarios)
    try:
        mode = link_mode(args.mode) if needs_link else "loopback"
    except (LinkUnavailable, OSError, subprocess.SubprocessError) as exc:
        print(f"no link can be made here ({exc}); only the loopback scenario runs", file=log)
        scenarios = [s for s in scenarios if s.spec is None]
        mode = "loopback"
    cond["link_mode"] = mode
    all_records: list[Json] = []
    links: list[Json] = []
    with (out_dir / "results.jsonl").open("w") as out:
        out.write(json.dumps(cond) + "\n")
        for scenario in scenarios:
            spec = "127.0.0.1, no link" if scenario.spec is None else repr(scenario.spec)
            print(f"scenario {scenario.name}: {spec}", file=log, flush=True)
            records, scenario_links = run_scenario(scenario, profile, mode, out, log)
            all_records += records
            links += scenario_links
        cond["loadavg_end"] = loadavg()
        out.write(json.dumps({"kind": "end", "loadavg_end": cond["loadavg_end"]}) + "\n")
    render(out_dir, cond, scenarios, all_records, links)
    if mode == "proxy":
        print(KERNEL_NEEDS_ROOT)
    failures = sum("error" in r for r in all_records) + sum("error" in k for k in links)
    return 1 if failures else 0


def render(
    out_dir: Path, cond: Json, scenarios: list[Scenario], records: list[Json], links: list[Json]
) -> None:
    """results.md and plots/ from the run's records."""
    log = sys.stderr
    (out_dir / "results.md").write_text(report.markdown(cond, scenarios, records, links))
    print(f"wrote {out_dir / 'results.jsonl'} and {out_dir / 'results.md'}", file=log)
    plotted = report.plots(out_dir / "plots", scenarios, records, slug)
    if plotted is None:
        print("matplotlib is not installed: plots skipped (pip install 'trio-utcp[bench]')")
    else:
        print(f"wrote {len(plotted)} plots in {out_dir / 'plots'}", file=log)


def rerender(out_dir: Path) -> int:
    """``--render``: rebuild results.md and plots/ from an earlier run's results.jsonl."""
    lines = (out_dir / "results.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    cond = rows[0]
    for row in rows:
        if row["kind"] == "end":
            cond["loadavg_end"] = row["loadavg_end"]
    scenarios = [Scenario(s["name"], s["spec"]) for s in cond["scenarios"]]
    records = [r for r in rows if r["kind"] == "measurement"]
    links = [r for r in rows if r["kind"] == "link"]
    render(out_dir, cond, scenarios, records, links)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(__doc__ or "").split("\n\n")[0],
        epilog=f"groups: {', '.join(GROUPS)}; scenarios: loopback, {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        metavar="NAME|SPEC",
        help="scenario names, group names or netem specs (default: the full group, or quick)",
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized: under 2 minutes")
    parser.add_argument("--out", required=True, help="directory for results.jsonl/.md, plots/")
    parser.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: rebuild results.md and plots/ from --out's results.jsonl",
    )
    parser.add_argument("--mode", choices=MODES, default="auto", help="how links are made")
    args = parser.parse_args(argv)
    try:
        resolve(args.scenarios or [])
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return rerender(Path(args.out)) if args.render else run(args)
