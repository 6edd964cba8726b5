"""atheris (libFuzzer) entry point for the receive path: decoder, host and core together.

Each input is a sequence of (mode, length, datagram) records (see ``_fuzz_harness``) fed to
a server host with one established connection; a failed invariant or any exception is a
crash that libFuzzer saves as ``crash-*``. Run from the repository root, bounded:

    PYTHONPATH=. python tests/fuzz/atheris_receive.py -atheris_runs=20000 \
        -max_total_time=60 /tmp/fuzz-out tests/fuzz/corpus

The first directory receives new inputs; later ones (the stored corpus) only seed. A crash
worth keeping goes into tests/fuzz/corpus/ under a name that says what it found; the
default suite replays every file there (tests/fuzz/test_receive_fuzz.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports():
    import _fuzz_harness  # imports utcp, instrumented with it


def test_one_input(data: bytes) -> None:
    for _, datagram in _fuzz_harness.split(data):
        _fuzz_harness.decode_only(datagram)
    _fuzz_harness.run_input(data)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
