"""bench/bench_compare.py runs end to end in ``--quick`` mode and prints complete JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_compare.py"
SYSTEMS = {"utcp", "kernel", "udp", "quic", "kcp"}
TESTS = {"bulk", "echo"}


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("aioquic") is None or importlib.util.find_spec("kcp") is None,
    reason="needs the compare extra: pip install 'trio-utcp[compare]' (aioquic, kcp)",
)
def test_quick_run_prints_every_measurement_summary_and_conditions() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--timeout", "60"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    measurements = [r for r in records if r["kind"] == "measurement"]
    assert {(r["system"], r["test"]) for r in measurements} == {
        (s, t) for s in SYSTEMS for t in TESTS
    }
    for r in measurements:
        assert "error" not in r, r
        # Raw UDP may lose datagrams (and rounds up to whole datagrams); the streams may not.
        if r["test"] == "bulk":
            assert r["MB_s"] > 0
            expected = r["bytes"] > 0 if r["system"] == "udp" else r["bytes"] == 5 * 10**6
            assert expected, r
        else:
            assert 0 < r["p50_us"] <= r["p99_us"]
            lost = r["lost"] if r["system"] == "udp" else 0
            assert r["round_trips"] + lost == 200, r
    (summary,) = [r for r in records if r["kind"] == "summary"]
    assert summary["failures"] == 0 and summary["skipped"] == {}
    assert set(summary["median"]) == SYSTEMS
    for system in SYSTEMS:
        assert all(v is not None for v in summary["ratios_to_utcp"][system].values())
    cond = summary["conditions"]
    for key in ("python", "kernel", "cpu_count", "loadavg_at_start", "loadavg_at_end"):
        assert cond[key] is not None, key
    assert all(cond["packages"][name] for name in ("trio", "aioquic", "kcp"))
    assert "| system | bulk MB/s |" in done.stdout
