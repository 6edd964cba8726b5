"""``python -m bench --quick`` runs end to end (the loopback scenario and one emulated
link) and leaves complete, well-formed outputs: every scenario x stack x test measured,
every line of results.jsonl JSON, a table row per metric in results.md, plots when
matplotlib is installed. No timing assertion: the figures depend on the machine."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

STREAM_EMULATED = ["setup", "echo64", "echo4k", "msg100k", "bulk1", "parallel"]
EXPECTED: dict[tuple[str, str], list[str]] = {
    ("loopback", "utcp"): ["bulk1", "echo64"],
    ("loopback", "kernel"): ["bulk1", "echo64"],
    ("loopback", "udp"): ["blast", "echo64"],
    ("quick-lossy", "utcp"): [
        *STREAM_EMULATED,
        "underload_cubic",
        "underload_newreno",
        "underload_ledbat",
    ],
    ("quick-lossy", "kernel"): [*STREAM_EMULATED, "underload_kernel"],
    ("quick-lossy", "udp"): ["echo64", "blast"],
}
if importlib.util.find_spec("aioquic") is not None:
    EXPECTED[("loopback", "quic")] = ["bulk", "echo64"]

# The keys each test's record must carry (values may be None where the doc says so, e.g.
# p99.9 with fewer than 1,000 samples, or RTT multiples on a link without delay).
KEYS = {
    "setup": ["established_ms", "first_byte_ms", "established_rtts", "first_byte_rtts"],
    "echo": ["n", "p50_ms", "p90_ms", "p99_ms", "p999_ms"],
    "msg100k": ["n", "p50_ms", "p99_ms", "retrans_bytes", "spurious_retrans"],
    "bulk": ["bytes", "seconds", "Mbit_s", "complete", "retrans_bytes", "spurious_retrans"],
    "parallel": ["per_connection_Mbit_s", "jain", "aggregate_Mbit_s", "retrans_bytes"],
    "underload": ["n", "p50_ms", "p99_ms", "samples_ms", "load_Mbit_s", "retrans_bytes"],
    "blast": ["bytes", "Mbit_s", "loss", "sent_datagrams"],
}

MD_ROWS = [
    "| time to ESTABLISHED, ms (RTTs) |",
    "| time to first response byte, ms (RTTs) |",
    "| 64 B echo p50, ms |",
    "| 64 B echo p99.9, ms |",
    "| 4 KiB echo p90, ms |",
    "| 100 KB response p99, ms |",
    "| bulk 1 MB goodput, Mbit/s |",
    "| bulk 1 MB: retransmitted bytes / spurious retransmissions |",
    "| parallel connections: Jain's fairness index |",
    "| 64 B echo p99 under load, ms (utcp ledbat / kernel) |",
    "| bulk goodput, Mbit/s |",
]


def key_set(test: str, stack: str) -> list[str]:
    if test.startswith("echo") and stack != "quic":
        return KEYS["echo"]
    if test.startswith("echo"):
        return ["p50_ms", "p99_ms"]
    if test.startswith("bulk") and stack == "quic":
        return ["bytes", "Mbit_s"]
    if test.startswith("bulk"):
        return KEYS["bulk"]
    if test.startswith("underload_"):
        return KEYS["underload"]
    return KEYS[test]


def why_not_root() -> str | None:
    if not sys.platform.startswith("linux"):
        return "needs Linux (network namespaces, TUN)"
    if os.geteuid() != 0:
        return "needs root: the emulated link joins two network namespaces"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs the iproute2 ip command"
    return None


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.skipif(why_not_root() is not None, reason=why_not_root() or "")
def test_quick_run_writes_every_measurement_table_row_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-4000:]

    lines = (out / "results.jsonl").read_text().splitlines()
    records: list[dict[str, Any]] = [json.loads(line) for line in lines]
    cond = records[0]
    assert cond["kind"] == "conditions"
    for key in ("utcp_tree", "python", "trio", "kernel", "cpu_count", "cpu_model"):
        assert cond[key], key
    assert cond["link_mode"] in ("netem", "emulated")
    assert len(cond["loadavg_start"]) == 3
    assert records[-1]["kind"] == "end" and len(records[-1]["loadavg_end"]) == 3

    measured = [r for r in records if r["kind"] == "measurement"]
    got: dict[tuple[str, str], list[str]] = {}
    for r in measured:
        got.setdefault((r["scenario"], r["stack"]), []).append(r["test"])
        assert "error" not in r, r
        assert isinstance(r["link_valid"], bool), r
        for key in key_set(r["test"], r["stack"]):
            assert key in r, (r["scenario"], r["stack"], r["test"], key)
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in EXPECTED.items()}
    for r in measured:
        if r["test"] == "parallel":
            assert len(r["per_connection_Mbit_s"]) == r["connections"] == 2
        if r["test"] == "setup" and r["scenario"] == "quick-lossy":
            assert r["established_rtts"] is not None  # the spec's 20 ms round trip

    links = [r for r in records if r["kind"] == "link"]
    lossy = [link for link in links if link["scenario"] == "quick-lossy"]
    assert {link["stack"] for link in lossy} == {"utcp", "kernel", "udp"}
    for link in lossy:
        assert link["mode"] == cond["link_mode"]
        assert isinstance(link["report"]["valid"], bool)
        assert link["report"]["valid"] or link["report"]["invalid_reason"]
        assert link["report"]["packets"] > 0

    md = (out / "results.md").read_text()
    assert "## loopback:" in md and "## quick-lossy: `delay 10ms loss 1%`" in md
    for row in MD_ROWS:
        assert row in md, row
    assert "| metric | utcp | kernel TCP | utcp/kernel | raw UDP |" in md
    if any(not link["report"]["valid"] for link in lossy):
        assert "INVALID" in md

    plots = out / "plots"
    if importlib.util.find_spec("matplotlib") is None:
        assert "plots skipped" in done.stdout
    else:
        cdf = plots / "cdf_loopback.png"
        assert cdf.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for png in plots.glob("*.png"):
            assert png.stat().st_size > 1000, png
