"""bench/bench_targets.py runs end to end in ``--quick`` mode and prints every target."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_targets.py"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, uses SO_REUSEPORT")
def test_quick_run_prints_every_target_with_its_conditions() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--no-compare", "--timeout", "60"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
        env={"PYTHONPATH": str(SCRIPT.parents[1]), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    (summary,) = [r for r in records if r.get("kind") == "targets"]
    assert summary["failures"] == 0
    targets = {row["target"] for row in summary["rows"]}
    for name in ("bulk >= 150 MB/s", "echo p50 <= 1.3x kernel TCP", "CPU per MB (utcp-1452)"):
        assert name in targets
    assert any(t.startswith("multi-core") for t in targets)
    assert summary["conditions"]["cpu_count"] >= 1
    assert "| target | conditions | utcp | references | verdict |" in done.stdout
