"""The sans-IO rule, checked by scanning imports: the core touches no I/O, clock or trio."""

from __future__ import annotations

import ast
import pathlib

import utcp

CORE = [
    "_seq.py",
    "_wire.py",
    "_config.py",
    "_buffers.py",
    "_rtt.py",
    "_recovery.py",
    "_connection.py",
    "_host.py",
    "_state.py",
    "_events.py",
    "_errors.py",
    "_stats.py",
    "_congestion/__init__.py",
    "_congestion/base.py",
    "_congestion/newreno.py",
    "_congestion/cubic.py",
    "_congestion/cwv.py",
    "_congestion/hystart.py",
    "_congestion/ledbat.py",
    "_rack.py",
    "_loss_recovery.py",
    "_pacing.py",
    "_output.py",
    "_kernel_errors.py",
    "_limits.py",
    "_syncookies.py",
]
FORBIDDEN = {
    "trio",
    "anyio",
    "socket",
    "time",
    "random",
    "asyncio",
    "select",
    "selectors",
    "threading",
    "os",
    "datetime",
    "utcp.testing",
}


def imported_modules(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_core_modules_import_no_io_clock_or_randomness() -> None:
    root = pathlib.Path(utcp.__file__).parent
    for rel in CORE:
        mods = imported_modules(root / rel)
        bad = {m for m in mods if m.split(".")[0] in FORBIDDEN or m.startswith("utcp.testing")}
        assert not bad, f"{rel} imports {bad}"
