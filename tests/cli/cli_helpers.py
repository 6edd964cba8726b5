"""Helpers for running the ``utcp`` command line and the examples as real processes (the
tests import them; conftest.py registers the ``spawn`` fixture).

Every process is started through :func:`spawn` (or the ``run_cli`` shortcut) and is killed by
its PID and reaped when the test ends, whatever happened. ``CLI`` is the one place that says
how the command line is invoked.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CLI = [sys.executable, "-m", "utcp"]  # how every test runs the command line
START_TIMEOUT = 20.0


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any UTCP_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UTCP_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


class Proc:
    """A child process whose stderr lines are collected by a thread."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        stdin: Any = subprocess.DEVNULL,
        stdout: Any = subprocess.PIPE,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.popen = subprocess.Popen(
            self.argv,
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=env or clean_env(),
        )
        self.pid = self.popen.pid
        self.stderr_lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.popen.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.popen.stderr,), daemon=True)
        self._reader.start()
        self._stdout = bytearray()
        self._stdout_reader: threading.Thread | None = None
        if self.popen.stdout is not None:
            self._stdout_reader = threading.Thread(
                target=self._read_stdout, args=(self.popen.stdout,), daemon=True
            )
            self._stdout_reader.start()

    def _read_stdout(self, pipe: IO[bytes]) -> None:
        while chunk := pipe.read1(65536):
            self._stdout += chunk

    def _read(self, pipe: IO[bytes]) -> None:
        for raw in pipe:
            line = raw.decode(errors="replace").rstrip("\n")
            self.stderr_lines.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """The first stderr line (from now on) that matches ``pattern``."""
        regex = re.compile(pattern)
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"{pattern!r} not seen within {timeout} s; stderr: {self.stderr()}"
                ) from None
            if line is None:
                raise AssertionError(
                    f"{self.argv} exited ({self.popen.poll()}) before {pattern!r}: {self.stderr()}"
                )
            match = regex.search(line)
            if match:
                return match

    def port(self, kind: str = "UDP") -> int:
        """The port of the first "listening on ADDR:PORT (kind)" line."""
        return int(self.wait_for(rf"listening on \S+:(\d+) \({kind}").group(1))

    def finish(self, timeout: float) -> tuple[int, str]:
        """Wait for exit (killing it after ``timeout``); (exit status, stdout text)."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.argv} still running after {timeout} s: {self.stderr()}"
            ) from None
        self._reader.join(5)
        if self._stdout_reader is not None:
            self._stdout_reader.join(5)
        return self.popen.returncode, self._stdout.decode(errors="replace")

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        for pipe in (self.popen.stdout, self.popen.stdin):
            if pipe is not None:
                pipe.close()
        self._reader.join(5)
        if self.popen.stderr is not None:
            self.popen.stderr.close()

    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)


Spawn = Callable[..., Proc]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """``spawn(argv, **kwargs)`` starts a :class:`Proc`; all are killed at teardown."""
    procs: list[Proc] = []

    def start(argv: Sequence[str], **kwargs: Any) -> Proc:
        proc = Proc(argv, **kwargs)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


def cli(*args: str) -> list[str]:
    return [*CLI, *args]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False
