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


def test_target_rows_for_the_compiled_core_appear_only_when_it_was_measured() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_targets

    def bulk(system: str, mb_s: float) -> dict[str, object]:
        return {"system": system, "test": "bulk", "MB_s": mb_s, "bytes": 10**7}

    def echo(system: str, p50: float, p99: float) -> dict[str, object]:
        return {"system": system, "test": "echo", "p50_us": p50, "p99_us": p99}

    pure = [bulk("utcp", 120.0), bulk("kernel", 900.0), bulk("udp", 40.0)]
    pure += [echo("utcp", 500.0, 900.0), echo("kernel", 150.0, 300.0), echo("udp", 100.0, 200.0)]
    rows, _ = bench_targets.targets(pure, [], None)
    assert not [r for r in rows if "compiled" in r["target"]]
    compiled = [bulk("utcp-compiled", 180.0), echo("utcp-compiled", 180.0, 650.0)]
    rows, table = bench_targets.targets(pure + compiled, [], None)
    verdicts = {r["target"]: r["verdict"] for r in rows}
    assert verdicts["bulk >= 150 MB/s"] == "NOT met"
    assert verdicts["bulk >= 150 MB/s (compiled core)"] == "met"
    assert verdicts["echo p50 <= 1.3x kernel TCP (compiled core)"] == "met"  # 1.2x
    assert verdicts["echo p99 <= 2.0x kernel TCP (compiled core)"] == "NOT met"  # 2.17x
    assert "| bulk >= 150 MB/s (compiled core) |" in table
