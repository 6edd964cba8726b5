"""``utcp tunnel`` as real processes on 127.0.0.1: a kernel-TCP client and a kernel-TCP server
(tests/cli/kernel_peer.py) exchange data both ways through ``tunnel client`` and ``tunnel
server``, half-closes included, and check sha256 at both ends."""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from cli_helpers import ROOT, Proc, Spawn, cli, free_udp_port, sha256

PEER = [sys.executable, str(ROOT / "tests" / "cli" / "kernel_peer.py")]
CLIENT_SEED, SERVER_SEED = 1, 2


def expected(nbytes: int, seed: int) -> str:
    return sha256(random.Random(seed).randbytes(nbytes))


def peer_result(proc: Proc, timeout: float) -> dict[str, Any]:
    code, out = proc.finish(timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert code == 0 and lines, f"kernel peer exited {code}: {out!r} {proc.stderr()}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def check_exchange(client: dict[str, Any], server: dict[str, Any], nbytes: int) -> None:
    """Both directions complete and intact: what each sent is what the other received."""
    assert "send_error" not in client and "recv_error" not in client, client
    assert "send_error" not in server and "recv_error" not in server, server
    assert client["sent"] == server["received"] == nbytes
    assert server["sent"] == client["received"] == nbytes
    assert client["received_sha256"] == server["sent_sha256"] == expected(nbytes, SERVER_SEED)
    assert server["received_sha256"] == client["sent_sha256"] == expected(nbytes, CLIENT_SEED)


def start_service(spawn: Spawn, nbytes: int, idle: float = 0.0) -> tuple[Proc, int]:
    """The kernel-TCP service behind the tunnel server."""
    argv = [*PEER, "server", "127.0.0.1", "0", str(nbytes), str(SERVER_SEED), str(idle)]
    proc = spawn(argv)
    return proc, int(proc.wait_for(r"READY (\d+)").group(1))


def start_tunnel(
    spawn: Spawn,
    service_port: int,
    *,
    server_args: tuple[str, ...] = (),
    client_args: tuple[str, ...] = (),
    udp_port: int = 0,
) -> tuple[Proc, Proc, int]:
    """Tunnel server (utcp on ``udp_port``) and client; the client's kernel-TCP port."""
    server = spawn(
        cli(
            "tunnel",
            "server",
            "--listen",
            f"127.0.0.1:{udp_port}",
            "--to",
            f"127.0.0.1:{service_port}",
            *server_args,
        )
    )
    port = server.port("UDP")
    client = spawn(
        cli("tunnel", "client", "--listen", "0", "--to", f"127.0.0.1:{port}", *client_args)
    )
    return server, client, client.port("kernel TCP")


def exchange_through_tunnel(
    spawn: Spawn,
    nbytes: int,
    *,
    server_args: tuple[str, ...] = (),
    client_args: tuple[str, ...] = (),
    timeout: float = 60.0,
) -> None:
    service, service_port = start_service(spawn, nbytes)
    _, _, port = start_tunnel(spawn, service_port, server_args=server_args, client_args=client_args)
    user = spawn([*PEER, "client", "127.0.0.1", str(port), str(nbytes), str(CLIENT_SEED)])
    check_exchange(peer_result(user, timeout), peer_result(service, timeout), nbytes)


def test_tunnel_carries_2mb_both_ways(spawn: Spawn) -> None:
    exchange_through_tunnel(spawn, 2 * 1024 * 1024)


@pytest.mark.slow
def test_tunnel_carries_20mb_both_ways(spawn: Spawn) -> None:
    exchange_through_tunnel(spawn, 20 * 1024 * 1024, timeout=180)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("tls")
    files = {"ca": d / "ca.pem", "chain": d / "chain.pem", "key": d / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    with open(files["chain"], "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    return files


def tls_server_args(files: dict[str, Path]) -> tuple[str, ...]:
    return ("--tls-cert", str(files["chain"]), "--tls-key", str(files["key"]))


def test_tunnel_with_tls_carries_2mb_both_ways(spawn: Spawn, tls_files: dict[str, Path]) -> None:
    exchange_through_tunnel(
        spawn,
        2 * 1024 * 1024,
        server_args=tls_server_args(tls_files),
        client_args=("--tls-ca", str(tls_files["ca"])),
    )


@pytest.mark.slow
def test_tunnel_with_tls_carries_20mb_both_ways(spawn: Spawn, tls_files: dict[str, Path]) -> None:
    exchange_through_tunnel(
        spawn,
        20 * 1024 * 1024,
        server_args=tls_server_args(tls_files),
        client_args=("--tls-ca", str(tls_files["ca"])),
        timeout=180,
    )


def test_tunnel_with_pinned_certificate(spawn: Spawn, tls_files: dict[str, Path]) -> None:
    nbytes = 100_000
    service, service_port = start_service(spawn, nbytes)
    server, _, _ = start_tunnel(spawn, service_port, server_args=tls_server_args(tls_files))
    pin = server.wait_for(r"TLS certificate SHA-256 ([0-9A-F:]+)").group(1)
    # A client pinned to the server's fingerprint as the server printed it.
    pinned = spawn(
        cli("tunnel", "client", "--listen", "0", "--to", server_to(server), "--tls-pin", pin)
    )
    port = pinned.port("kernel TCP")
    user = spawn([*PEER, "client", "127.0.0.1", str(port), str(nbytes), str(CLIENT_SEED)])
    check_exchange(peer_result(user, 30), peer_result(service, 30), nbytes)


def server_to(server: Proc) -> str:
    """The utcp address a started tunnel server reported."""
    line = next(line for line in server.stderr_lines if "(UDP)" in line)
    return line.split("listening on ")[1].split(" ")[0]


def test_tunnel_client_rejects_a_certificate_not_pinned(
    spawn: Spawn, tls_files: dict[str, Path]
) -> None:
    _, service_port = start_service(spawn, 1000)
    server, _, _ = start_tunnel(spawn, service_port, server_args=tls_server_args(tls_files))
    wrong = "AB" * 32
    pinned = spawn(
        cli("tunnel", "client", "--listen", "0", "--to", server_to(server), "--tls-pin", wrong)
    )
    port = pinned.port("kernel TCP")
    user = spawn([*PEER, "client", "127.0.0.1", str(port), "1000", str(CLIENT_SEED)])
    result = peer_result(user, 30)
    assert result["received"] == 0  # closed without a byte from the service
    pinned.wait_for(r"TLS failed: server certificate SHA-256 \w+ is not pinned")


def test_tunnel_client_started_before_its_server_connects_once_it_appears(
    spawn: Spawn,
) -> None:
    nbytes = 200_000
    udp_port = free_udp_port()
    client = spawn(
        cli(
            "tunnel",
            "client",
            "--listen",
            "0",
            "--to",
            f"127.0.0.1:{udp_port}",
            "--connect-timeout",
            "1",
        )
    )
    port = client.port("kernel TCP")
    user = spawn([*PEER, "client", "127.0.0.1", str(port), str(nbytes), str(CLIENT_SEED)])
    client.wait_for(r"retrying in")  # the server is not there yet
    time.sleep(1.0)
    service, service_port = start_service(spawn, nbytes)
    spawn(
        cli(
            "tunnel",
            "server",
            "--listen",
            f"127.0.0.1:{udp_port}",
            "--to",
            f"127.0.0.1:{service_port}",
        )
    ).port("UDP")
    check_exchange(peer_result(user, 60), peer_result(service, 60), nbytes)


def segments_sent(proc: Proc) -> int:
    """Segments the client's live tunnel connection has sent, from a SIGUSR1 report."""
    before = len(proc.stderr_lines)
    proc.signal(signal.SIGUSR1)
    match = proc.wait_for(r"in (\d+) segments, received")
    assert len(proc.stderr_lines) > before
    return int(match.group(1))


def test_idle_tunnel_survives_longer_than_the_keepalive_interval(spawn: Spawn) -> None:
    nbytes, idle = 100_000, 3.0
    service, service_port = start_service(spawn, nbytes, idle)
    _, client, port = start_tunnel(
        spawn,
        service_port,
        server_args=("--keepalive", "1"),
        client_args=("--keepalive", "1"),
    )
    # Both ends send half, stay silent for 3 s (three keepalive intervals), send the rest.
    user = spawn(
        [*PEER, "client", "127.0.0.1", str(port), str(nbytes), str(CLIENT_SEED), str(idle)]
    )
    client.wait_for(r"tunnelled as")
    time.sleep(1.0)  # the first half and the service's data have long crossed by now
    first = segments_sent(client)
    time.sleep(1.5)
    second = segments_sent(client)
    check_exchange(peer_result(user, 60), peer_result(service, 60), nbytes)
    assert second > first, "no keepalive probe was sent while the tunnel was idle"
