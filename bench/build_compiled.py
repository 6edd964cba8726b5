"""Build the opt-in compiled core into a directory, leaving this tree pure Python.

pyproject's mypyc build hook (off unless ``HATCH_BUILD_HOOK_ENABLE_MYPYC=true``) compiles
the sans-IO core with mypyc. It compiles in place, so this script builds the wheel from a
copy of the tree and unpacks it into ``OUT`` (default ``build/compiled``): a ``utcp``
package whose core modules are C extensions, and the wheel itself, to install. The
benchmarks measure it instead of this tree's ``utcp`` when ``UTCP_BENCH_PATH=OUT`` is set;
``tests/core/test_compiled.py`` checks that it puts the same segments on the wire as pure
Python.

    python bench/build_compiled.py                 # -> build/compiled
    UTCP_BENCH_PATH=build/compiled python bench/bench_loopback.py --quick

Needs a C compiler; the build (mypy, then gcc) takes two to three minutes on two cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(out: Path) -> Path:
    """Build the compiled wheel and unpack it into ``out`` (replaced); returns ``out``."""
    with tempfile.TemporaryDirectory(prefix="utcp-mypyc-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (ROOT / name).exists():
                shutil.copy2(ROOT / name, src / name)
        shutil.copytree(
            ROOT / "utcp", src / "utcp", ignore=shutil.ignore_patterns("__pycache__", "*.so")
        )
        env = dict(os.environ, HATCH_BUILD_HOOK_ENABLE_MYPYC="true")
        done = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp, str(src)],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the compiled build failed:\n{done.stdout}\n{done.stderr}")
        (wheel,) = Path(tmp).glob("*.whl")
        if out.exists():
            shutil.rmtree(out)
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(out)
        shutil.copy2(wheel, out)  # to install: pip install OUT/trio_utcp-*.whl
    if not list(out.glob("utcp/_connection.*.so")) and not list(out.glob("utcp/_connection.*.pyd")):
        raise RuntimeError(f"{out} holds no compiled core")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default=str(ROOT / "build" / "compiled"))
    out = build(Path(parser.parse_args().out).resolve())
    print(out)


if __name__ == "__main__":
    main()
