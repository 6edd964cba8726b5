"""bench/bench_soak.py runs end to end in ``--quick`` mode: every connection established,
every message echoed intact, no error, complete JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "bench_soak.py"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_quick_soak_has_no_errors() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--timeout", "300"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout.splitlines()[-1])
    result = record["result"]
    assert result["established"] == result["connections"] == 200
    assert result["errors"] == 0
    assert result["messages"] >= 200 * 9  # one a second for 10 s, the last may miss the end
    assert result["p99_us"] > 0 and result["rss_per_connection_kb"] > 0
