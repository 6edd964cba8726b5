"""The human-readable outputs of ``python -m bench``: progress lines, the markdown tables and
the PNG plots (matplotlib, optional)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import Json
from .scenarios import Scenario

BULK_LABELS = {"bulk1": "1 MB", "bulk10": "10 MB", "bulk100": "100 MB"}


def describe(record: Json) -> str:
    """One progress line for a measurement."""
    head = f"{record.get('stack')} {record.get('test')}:"
    if "error" in record:
        return f"{head} ERROR {str(record['error'])[:300]}"
    test = str(record.get("test"))
    if test == "setup":
        return f"{head} established {record['established_ms']:.1f} ms"
    if "p50_ms" in record:
        return f"{head} p50 {record['p50_ms']:.2f} ms, p99 {record.get('p99_ms') or 0:.2f} ms"
    if record.get("Mbit_s") is not None:
        return f"{head} {record['Mbit_s']:.1f} Mbit/s"
    return head


def num(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    v = float(value)
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


@dataclass(frozen=True)
class Row:
    label: str
    test: str  # utcp's test, and kernel's unless kernel_test says otherwise
    key: str
    udp_test: str | None = None
    rtt_key: str | None = None  # also show this value (in RTTs) in parentheses
    second_key: str | None = None  # "value / second" cells (no ratio)
    kernel_test: str | None = None


def rows_for(bulk_tests: list[str], ccs: list[str]) -> list[Row]:
    rows = [
        Row(
            "time to ESTABLISHED, ms (RTTs)", "setup", "established_ms", rtt_key="established_rtts"
        ),
        Row(
            "time to first response byte, ms (RTTs)",
            "setup",
            "first_byte_ms",
            rtt_key="first_byte_rtts",
        ),
    ]
    for test, size in (("echo64", "64 B"), ("echo4k", "4 KiB")):
        for p in ("p50", "p90", "p99", "p999"):
            label = f"{size} echo {p.replace('p999', 'p99.9')}, ms"
            rows.append(
                Row(label, test, f"{p}_ms", udp_test="echo64" if test == "echo64" else None)
            )
    rows += [
        Row("100 KB response p50, ms", "msg100k", "p50_ms"),
        Row("100 KB response p99, ms", "msg100k", "p99_ms"),
    ]
    for i, test in enumerate(bulk_tests):
        label = BULK_LABELS.get(test, test)
        blast = "blast" if i == 0 else None  # the raw UDP blast figure, once
        rows.append(Row(f"bulk {label} goodput, Mbit/s", test, "Mbit_s", udp_test=blast))
        rows.append(
            Row(
                f"bulk {label}: retransmitted bytes / spurious retransmissions",
                test,
                "retrans_bytes",
                second_key="spurious_retrans",
            )
        )
    rows += [
        Row("parallel connections: aggregate goodput, Mbit/s", "parallel", "aggregate_Mbit_s"),
        Row("parallel connections: Jain's fairness index", "parallel", "jain"),
    ]
    for cc in ccs:
        for p in ("p50", "p99"):
            rows.append(
                Row(
                    f"64 B echo {p} under load, ms (utcp {cc} / kernel)",
                    f"underload_{cc}",
                    f"{p}_ms",
                    kernel_test="underload_kernel",
                )
            )
        rows.append(
            Row(
                f"load goodput during it, Mbit/s (utcp {cc} / kernel)",
                f"underload_{cc}",
                "load_Mbit_s",
                kernel_test="underload_kernel",
            )
        )
    return rows


def usable(rec: Json) -> bool:
    """A measurement that completed on a link whose report says it held."""
    return "error" not in rec and rec.get("link_valid") is not False


def index(records: list[Json]) -> dict[tuple[str, str, str], Json]:
    return {(str(r["scenario"]), str(r["stack"]), str(r["test"])): r for r in records}


def cell(rec: Json | None, key: str, rtt_key: str | None, second_key: str | None) -> str:
    if rec is None:
        return "-"
    if "error" in rec:
        return "error"
    if rec.get("link_valid") is False:
        return "invalid"
    text = num(rec.get(key))
    if key == "Mbit_s" and rec.get("complete") is False:
        text += "*"
    if rtt_key and rec.get(rtt_key) is not None:
        text += f" ({rec[rtt_key]:.2f})"
    if second_key:
        text += f" / {num(rec.get(second_key))}"
    return text


def ratio(a: Json | None, b: Json | None, key: str) -> str:
    if a is None or b is None or not usable(a) or not usable(b):
        return "-"
    x, y = a.get(key), b.get(key)
    if not isinstance(x, (int, float)) or not isinstance(y, (int, float)) or not y:
        return "-"
    return f"{x / y:.2f}"


def scenario_table(
    scenario: Scenario, recs: dict[tuple[str, str, str], Json], rows: list[Row], proxy: bool
) -> list[str]:
    name = scenario.name
    kernel_col = "kernel TCP (needs root)" if proxy else "kernel TCP"
    lines = [
        f"| metric | utcp | {kernel_col} | utcp/kernel | raw UDP |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        u = recs.get((name, "utcp", row.test))
        k = recs.get((name, "kernel", row.kernel_test or row.test))
        d = recs.get((name, "udp", row.udp_test)) if row.udp_test else None
        udp_key = row.key if row.udp_test == "echo64" else "Mbit_s"
        udp_text = cell(d, udp_key, None, None) if row.udp_test else ""
        if d is not None and row.udp_test == "blast" and usable(d):
            udp_text += f" (loss {100 * (d.get('loss') or 0):.1f}%)"
        rat = "" if row.second_key else ratio(u, k, row.key)
        lines.append(
            f"| {row.label} | {cell(u, row.key, row.rtt_key, row.second_key)} "
            f"| {cell(k, row.key, row.rtt_key, row.second_key)} | {rat} | {udp_text} |"
        )
    return lines


def loopback_table(name: str, recs: dict[tuple[str, str, str], Json], bulk: str) -> list[str]:
    lines = [
        "| metric | utcp | kernel TCP | utcp/kernel | raw UDP | aioquic |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, key in (
        ("bulk goodput, Mbit/s", "Mbit_s"),
        ("64 B echo p50, ms", "p50_ms"),
        ("64 B echo p99, ms", "p99_ms"),
    ):
        test = bulk if key == "Mbit_s" else "echo64"
        u, k = recs.get((name, "utcp", test)), recs.get((name, "kernel", test))
        d = recs.get((name, "udp", "blast" if key == "Mbit_s" else "echo64"))
        q = recs.get((name, "quic", "bulk" if key == "Mbit_s" else "echo64"))
        lines.append(
            f"| {label} | {cell(u, key, None, None)} | {cell(k, key, None, None)} "
            f"| {ratio(u, k, key)} | {cell(d, key, None, None)} | {cell(q, key, None, None)} |"
        )
    return lines


def markdown(cond: Json, scenarios: list[Scenario], records: list[Json], links: list[Json]) -> str:
    recs = index(records)
    rows = rows_for(list(cond["bulk_tests"]), list(cond["utcp_ccs"]))
    p = cond["params"]
    out = [
        "# utcp vs kernel TCP on emulated links",
        "",
        f"- started {cond['started_utc']}, utcp tree {cond['utcp_tree']}, profile "
        f"`{cond['profile']}`",
        f"- Python {cond['python']} ({cond['implementation']}), trio {cond['trio']}, "
        f"Linux {cond['kernel']}, {cond['cpu_count']} CPUs ({cond['cpu_model']})",
        f"- load average (1, 5, 15 min) at start {loads(cond['loadavg_start'])}, at end "
        f"{loads(cond.get('loadavg_end'))}",
        f"- kernel TCP congestion control `{cond['kernel_tcp_cc']}` on both ends (system "
        f"default `{cond.get('kernel_tcp_cc_system_default')}`); utcp Nagle off (as trio "
        f"sets TCP_NODELAY), controllers {', '.join(cond['utcp_ccs'])} under load, cubic "
        "otherwise",
        f"- echoes: up to {p['echo_count']} round trips or {p['echo_seconds']} s; setup: "
        f"{p['setup_count']} connections (medians); 100 KB responses: up to {p['msg_count']}; "
        f"bulk uploads stop at {p['bulk_seconds']} s (`*`: time-bounded, fewer bytes than "
        f"named); {p['parallel']} parallel uploads for {p['parallel_seconds']} s; under load: "
        f"{p['load_seconds']} s upload, pings from {p['load_warmup']} s",
        "- ratios are utcp / kernel: above 1 is slower for latencies, faster for goodput; "
        "p99.9 needs 1,000 samples (n/a below); RTTs are the spec's added round trip",
        "",
    ]
    for scenario in scenarios:
        mine = [link for link in links if link["scenario"] == scenario.name]
        mode = mine[0].get("mode", "?") if mine else "not run"
        out.append(f"## {scenario.name}: {spec_text(scenario.spec)} ({mode})")
        out.append("")
        if mine:
            out.append(
                f"load average {loads(mine[0].get('loadavg_start'))} -> "
                f"{loads(mine[-1].get('loadavg_end'))}; "
                f"{len(mine)} links, one per group of tests"
            )
            out.append("")
        invalid = [link for link in mine if not (link.get("report") or {}).get("valid")]
        if invalid:
            out.append(
                f"**{len(invalid)} of {len(mine)} links INVALID: their figures are not results "
                "(shown as `invalid`; raw records in results.jsonl):**"
            )
            out.append("")
            for link in invalid:
                reason = (link.get("report") or {}).get("invalid_reason")
                out.append(f"- {link['stack']} {', '.join(link['tests'])}: {reason}")
            out.append("")
        if scenario.spec is None:
            out += loopback_table(scenario.name, recs, cond["loopback_bulk"])
        else:
            out += scenario_table(scenario, recs, rows, mode == "proxy")
        out.append("")
    return "\n".join(out) + "\n"


def loads(values: list[float] | None) -> str:
    return "n/a" if not values else " / ".join(f"{v:.2f}" for v in values)


def spec_text(spec: str | None) -> str:
    if spec is None:
        return "127.0.0.1, no emulated link"
    return f"`{spec}`" if spec else 'no impairment (`""`)'


def summarise(report: Json) -> str:
    """The link report's scalar entries, short."""
    parts = []
    for key, value in report.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif isinstance(value, (int, str, bool)) or value is None:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


# ================================================================= plots


def plots(
    out_dir: Path,
    scenarios: list[Scenario],
    records: list[Json],
    slug: Callable[[str], str],
) -> list[Path] | None:
    """Latency CDFs per scenario and goodput vs loss per RTT, from the usable records only;
    None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import ScalarFormatter
    except ImportError:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    recs = index(records)
    by_name = {s.name: s for s in scenarios}
    written: list[Path] = []
    curves = [  # stack, test, label, line style, colour
        ("utcp", "echo64", "utcp idle", "-", "C0"),
        ("kernel", "echo64", "kernel idle", "-", "C1"),
        ("udp", "echo64", "raw UDP idle", "-", "C2"),
        ("utcp", "underload_cubic", "utcp cubic under load", "--", "C0"),
        ("utcp", "underload_newreno", "utcp newreno under load", "-.", "C0"),
        ("utcp", "underload_ledbat", "utcp ledbat under load", ":", "C0"),
        ("kernel", "underload_kernel", "kernel under load", "--", "C1"),
    ]
    for name, scenario in by_name.items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        drawn = 0
        for stack, test, label, style, colour in curves:
            rec = recs.get((name, stack, test))
            samples = sorted(rec.get("samples_ms") or []) if rec and usable(rec) else []
            if not samples:
                continue
            ys = [(i + 1) / len(samples) for i in range(len(samples))]
            ax.step(
                samples,
                ys,
                where="post",
                linestyle=style,
                color=colour,
                label=f"{label} (n={len(samples)})",
            )
            drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("64 B echo round trip, ms (log)")
        ax.set_ylabel("fraction of round trips")
        ax.set_title(f"{name}: {spec_text(scenario.spec).replace('`', '')}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        path = out_dir / f"cdf_{slug(name)}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    summary = goodput_vs_loss(plt, out_dir, by_name, recs)
    if summary is not None:
        written.append(summary)
    return written


def goodput_vs_loss(
    plt: Any, out_dir: Path, by_name: dict[str, Scenario], recs: dict[tuple[str, str, str], Json]
) -> Path | None:
    """Bulk goodput (the largest transfer of the profile; no point where its link was
    invalid) against the spec's mean loss rate, one
    line per RTT and stack; rate-capped scenarios are left out (the cap, not loss, limits
    them), Gilbert-Elliott bursts are separate markers."""
    points: dict[tuple[int, str, bool], list[tuple[float, float]]] = {}
    for name, scenario in by_name.items():
        if scenario.spec is None or scenario.has_rate:
            continue
        rtt_ms = round(scenario.base_rtt * 1000)
        for stack in ("utcp", "kernel"):
            for test in ("bulk100", "bulk10", "bulk1"):
                rec = recs.get((name, stack, test))
                if rec is None:
                    continue
                if usable(rec) and rec.get("Mbit_s") is not None:
                    key = (rtt_ms, stack, scenario.bursty)
                    points.setdefault(key, []).append((100 * scenario.mean_loss, rec["Mbit_s"]))
                break  # the largest transfer measured, or no point
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rtts = sorted({k[0] for k in points})
    colours = {rtt: f"C{i}" for i, rtt in enumerate(rtts)}
    for (rtt, stack, bursty), pts in sorted(points.items()):
        pts.sort()
        xs, ys = [x for x, _ in pts], [y for _, y in pts]
        style = "-" if stack == "utcp" else "--"
        marker = "s" if bursty else "o"
        label = f"{stack}, RTT {rtt} ms" + (", GE bursts" if bursty else "")
        ax.plot(
            xs,
            ys,
            linestyle="none" if bursty else style,
            marker=marker,
            color=colours[rtt],
            fillstyle="none" if stack == "kernel" else "full",
            label=label,
        )
    ax.set_yscale("log")
    ax.set_xlabel("packet loss per direction, % (mean)")
    ax.set_ylabel("bulk goodput, Mbit/s (log)")
    ax.set_title("goodput vs loss (utcp solid/filled, kernel TCP dashed/hollow)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    path = out_dir / "goodput_vs_loss.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
