"""Every example in examples/ run as a real process on 127.0.0.1."""

from __future__ import annotations

import random
import re
import socket
import sys
from pathlib import Path

import pytest
from cli_helpers import EXAMPLES, Spawn, sha256

PY = sys.executable
RUN_TIMEOUT = 30.0


def example(name: str, *args: str) -> list[str]:
    return [PY, str(EXAMPLES / name), *args]


def test_echo_server_and_client_take_the_cli_flags_and_the_old_ones(spawn: Spawn) -> None:
    server = spawn(example("echo_server.py", "--listen", "127.0.0.1:0"))
    port = int(server.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
    for argv in (
        ("127.0.0.1", str(port), "--count", "3"),
        ("--host", "127.0.0.1", "--port", str(port), "--count", "3"),
    ):
        client = spawn(example("echo_client.py", *argv))
        code, out = client.finish(RUN_TIMEOUT)
        assert code == 0, client.stderr()
        assert out.count("round trip ") == 3 and "3 round trips to 127.0.0.1" in out


def test_echo_roundtrip(spawn: Spawn) -> None:
    proc = spawn(example("echo_roundtrip.py", "--count", "3"))
    code, out = proc.finish(RUN_TIMEOUT)
    assert code == 0, proc.stderr()
    assert re.search(r"median of 3 round trips [\d.]+ ms", out)


def test_sim_echo(spawn: Spawn) -> None:
    proc = spawn(example("sim_echo.py", "--delay", "0.01"))
    code, out = proc.finish(RUN_TIMEOUT)
    assert code == 0, proc.stderr()
    assert "connected in" in out


def test_file_transfer_checks_sha256_on_arrival(spawn: Spawn, tmp_path: Path) -> None:
    data = random.Random(3).randbytes(1_000_000)
    source, copy = tmp_path / "source.bin", tmp_path / "copy.bin"
    source.write_bytes(data)
    receiver = spawn(
        example("file_transfer.py", "receive", "--listen", "127.0.0.1:0", "-o", str(copy))
    )
    port = receiver.wait_for(r"receiving on 127\.0\.0\.1:(\d+)").group(1)
    sender = spawn(example("file_transfer.py", "send", "127.0.0.1", port, str(source)))
    code, out = sender.finish(RUN_TIMEOUT)
    assert code == 0, sender.stderr()
    assert out.strip() == f"OK {sha256(data)}"
    code, out = receiver.finish(RUN_TIMEOUT)
    assert code == 0, receiver.stderr()
    assert out.strip() == f"{copy}: OK {sha256(data)}"
    assert copy.read_bytes() == data
    # Not a terminal: plain progress lines, ending at the full size.
    assert receiver.stderr_lines[-1].endswith(f"{len(data)}/{len(data)} bytes")


def test_chat_relays_each_clients_messages_to_the_other(spawn: Spawn) -> None:
    server = spawn(example("chat.py", "server", "--listen", "127.0.0.1:0"))
    port = str(server.port())
    clients = {
        name: spawn(
            example(
                "chat.py",
                "client",
                "127.0.0.1",
                port,
                "--name",
                name,
                "--wait-peers",
                "1",
                "--send",
                f"hello from {name}",
                "--send",
                f"bye from {name}",
                "--expect",
                "2",
                "--timeout",
                "8",
            )
        )
        for name in ("alice", "bob")
    }
    outputs = {}
    for name, client in clients.items():
        code, out = client.finish(RUN_TIMEOUT)
        assert code == 0, client.stderr()
        outputs[name] = out.splitlines()
    assert outputs["alice"] == ["[bob] hello from bob", "[bob] bye from bob"]
    assert outputs["bob"] == ["[alice] hello from alice", "[alice] bye from alice"]
    server.wait_for(r"(alice|bob) left \(0 online\)")  # both left; the server runs on


def test_dropin_http_serves_httpx_over_utcp_on_one_connection(spawn: Spawn) -> None:
    server = spawn(example("dropin_http.py", "server", "--listen", "127.0.0.1:0"))
    port = int(server.wait_for(r"HTTP listening on 127\.0\.0\.1:(\d+)").group(1))
    # utcp.install() put trio.serve_tcp on a UDP socket: that UDP port is taken.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, pytest.raises(OSError):
        probe.bind(("127.0.0.1", port))
    size = 1_000_000
    client = spawn(
        example("dropin_http.py", "client", "127.0.0.1", str(port), "--path", f"/bytes/{size}")
    )
    code, out = client.finish(RUN_TIMEOUT)
    assert code == 0, client.stderr()
    expected = sha256((bytes(range(251)) * (size // 251 + 1))[:size])
    lines = out.splitlines()
    assert len(lines) == 4 and lines[0].startswith("GET / 200 ")
    for line in lines[1:]:
        assert line == f"GET /bytes/{size} 200 {size} bytes sha256 {expected}"
    # One kept-alive connection carried all four requests.
    server.wait_for(r"connection #1 from 127\.0\.0\.1:\d+: 4 requests")
