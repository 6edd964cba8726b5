"""bench/echo_timeline.py: the server-side timeline of an echo, for utcp and kernel TCP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.echo_timeline import Timeline, analyse

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "echo_timeline.py"


def test_a_short_run_reports_both_stacks_with_utcps_extra_task() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--count", "100", "--warmup", "10", "--timeout", "60"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = {
        r["system"]: r
        for r in (json.loads(line) for line in done.stdout.splitlines() if line.startswith("{"))
    }
    for system in ("utcp", "kernel"):
        r = records[system]
        assert r["round_trips"] == 100
        # Replies paired with the blocking wake-up before them (on a loaded machine the
        # server may not block before every request, so not necessarily all 100).
        assert 0 < r["messages"] <= 100
        assert 0 < r["wake_to_send_p50_us"] <= r["wake_to_send_p90_us"]
        assert r["client_p50_us"] > 0 and r["cpu_us_per_message"] > 0
        assert "handler" in r["step_p50_us"]
        assert r["server_compiled_core"] is False  # this tree, pure Python
    # utcp's datagrams are read by the endpoint's I/O task, which then wakes the handler:
    # a task of its own, where a kernel socket is read by the handler itself.
    assert "utcp I/O task" in records["utcp"]["step_p50_us"]
    assert "utcp I/O task" not in records["kernel"]["step_p50_us"]
    assert records["utcp"]["steps_per_message"] >= 2
    assert "| system | client RT p50 us |" in done.stdout


def test_analysis_pairs_each_send_with_the_wake_up_before_it() -> None:
    t = Timeline()
    t.wakes = [1_000, 10_000]
    t.passes = [1_000, 3_000, 10_000, 12_000, 14_000]
    t.step_starts = [1_500, 4_000, 10_500, 12_500, 14_500]
    t.steps = {"handler": [2_000, 4_000], "utcp I/O task": [1_000, 3_000], "other": [9]}
    report = analyse(t, sends=[500, 5_000, 15_000], cpu=[1.0, 1.000_5], warmup=1)
    # The warm-up send is skipped; 5,000 pairs with the wake at 1,000 (two passes, two
    # steps), 15,000 with the one at 10,000 (three of each).
    assert report["messages"] == 2
    assert report["wake_to_send_p50_us"] == 4.0
    assert report["wake_to_send_p90_us"] == 5.0
    assert report["passes_per_message"] == 2.5
    assert report["steps_per_message"] == 2.5
    assert report["step_p50_us"] == {"handler": 2.0, "utcp I/O task": 1.0}
    assert report["cpu_us_per_message"] == pytest.approx(500.0)


def test_utcp_bench_path_comes_before_this_tree(tmp_path: Path) -> None:
    # UTCP_BENCH_PATH names another build to measure (the compiled core): its utcp must be
    # the one imported, not this tree's, which the script also puts on sys.path.
    fake = tmp_path / "utcp"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise SystemExit('the build under UTCP_BENCH_PATH')\n")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "UTCP_BENCH_PATH": str(tmp_path)},
    )
    assert "the build under UTCP_BENCH_PATH" in done.stderr
