"""``python -m utcp run``: an unmodified trio program (examples/dropin_echo.py, which never
imports utcp) run as real processes, its TCP carried over UDP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _dropin import Tls, assert_no_kernel_tcp

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SIZE = 300_000
TOTALS = re.compile(r"utcp: total sent (\d+) B, received (\d+) B")


def utcp_run(*args: str, options: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "utcp", "run", "--stats", *options, *args]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def totals(stderr: str) -> tuple[int, int]:
    match = TOTALS.search(stderr)
    assert match, stderr
    return int(match[1]), int(match[2])


@pytest.mark.parametrize("tls_on", [False, True], ids=["plain", "tls"])
def test_utcp_run_puts_an_unmodified_trio_server_and_client_on_udp(
    tls_on: bool, tls: Tls, tmp_path: Path
) -> None:
    server_tls: list[str] = []
    client_tls: list[str] = []
    if tls_on:
        chain, key, ca = tls.write(tmp_path)
        server_tls = ["--tls-cert", str(chain), "--tls-key", str(key)]
        client_tls = ["--tls-ca", str(ca)]
    server = subprocess.Popen(
        utcp_run(str(EXAMPLES / "dropin_echo.py"), "server", "--port", "0", *server_tls),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("listening on port"), line
        port = int(line.split()[-1])
        # The client runs as a module (-m) from the examples directory, with the endpoint
        # options passed through.
        pcap = tmp_path / "client.pcap"
        options = ("--pcap", str(pcap), "--congestion", "newreno", "--mss", "1000")
        client = subprocess.run(
            utcp_run(
                "-m",
                "dropin_echo",
                "client",
                "127.0.0.1",
                str(port),
                "--size",
                str(SIZE),
                *client_tls,
                options=options,
            ),
            capture_output=True,
            text=True,
            env=child_env(),
            cwd=EXAMPLES,
            timeout=60,
        )
        assert client.returncode == 0, client.stderr
        assert "sha256 ok" in client.stdout and f" {SIZE} bytes" in client.stdout
        sent, received = totals(client.stderr)
        assert sent >= SIZE and received >= SIZE  # the bytes went through utcp connections
        assert_no_kernel_tcp(port)  # ... and no kernel TCP socket ever had the port
        assert " mss 988 newreno" in client.stderr  # 1000 less the timestamp option
        capture = pcap.read_bytes()
        assert capture[:4] == b"\xd4\xc3\xb2\xa1" and len(capture) > SIZE  # one pcap header
    finally:
        server.send_signal(signal.SIGTERM)
        _, server_err = server.communicate(timeout=30)
    assert server.returncode == 0, server_err
    sent, received = totals(server_err)
    assert sent >= SIZE and received >= SIZE


def test_utcp_run_reports_usage_errors() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "utcp", "run"], capture_output=True, text=True, env=child_env()
    )
    assert done.returncode == 2
    assert "give a script or -m module" in done.stderr
