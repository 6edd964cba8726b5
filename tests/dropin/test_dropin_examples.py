"""The drop-in examples run as real processes on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_launcher import EXAMPLES, child_env


@pytest.mark.parametrize(
    ("example", "args", "expected"),
    [
        ("dropin_install.py", [], "echoed: hello over utcp"),
        ("dropin_anyio.py", [], "echoed: hello from anyio over utcp"),
        ("dropin_anyio.py", ["--tls"], "echoed: hello from anyio over utcp"),
    ],
)
def test_dropin_example_runs(example: str, args: list[str], expected: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / example), *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout
