"""The atheris entry point runs: a bounded libFuzzer session over the receive path (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

pytest.importorskip("atheris", reason="atheris is not installed (pip install utcp[fuzz])")


@pytest.mark.slow
def test_atheris_finds_no_crash_in_a_bounded_run(tmp_path: Path) -> None:
    out = tmp_path / "new"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "atheris_receive.py"),
            "-atheris_runs=3000",
            "-max_total_time=120",
            f"-artifact_prefix={tmp_path}/",
            str(out),
            str(HERE / "corpus"),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not list(tmp_path.glob("crash-*"))
