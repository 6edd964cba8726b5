"""echo, cat and the tunnel between two "machines": two network namespaces the test creates,
joined by a veth pair on 198.18.0.0/15 (RFC 2544's benchmarking range, never routed).

Needs root and ``ip netns``; skipped with the reason otherwise. The namespaces (and with them
the veth pair) are deleted whatever happens; every process is killed by its PID.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_helpers import Spawn, cli, sha256
from test_tunnel import CLIENT_SEED, PEER, check_exchange, peer_result

pytestmark = pytest.mark.root

ADDRESS_A, ADDRESS_B = "198.18.0.1", "198.18.0.2"
IP_TIMEOUT = 10.0
RUN_TIMEOUT = 60.0
_counter = itertools.count()


@dataclass
class Machines:
    a: str
    b: str

    @staticmethod
    def exec_in(netns: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", netns, *argv]


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT)
    if done.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@pytest.fixture
def machines() -> Iterator[Machines]:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("two network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("the iproute2 'ip' command is missing")
    n = next(_counter)
    names = Machines(f"utcp-cli-a-{os.getpid()}-{n}", f"utcp-cli-b-{os.getpid()}-{n}")
    created: list[str] = []
    try:
        try:
            for netns in (names.a, names.b):
                _ip("netns", "add", netns)
                created.append(netns)
            peer = ["peer", "name", "veth-b", "netns", names.b]
            _ip("link", "add", "veth-a", "netns", names.a, "type", "veth", *peer)
            ends = ((names.a, "veth-a", ADDRESS_A), (names.b, "veth-b", ADDRESS_B))
            for netns, dev, address in ends:
                _ip("-n", netns, "addr", "add", f"{address}/15", "dev", dev)
                _ip("-n", netns, "link", "set", dev, "up")
                _ip("-n", netns, "link", "set", "lo", "up")
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"could not set up two network namespaces: {exc}")
        yield names
    finally:
        for netns in created:
            subprocess.run(
                ["ip", "netns", "del", netns], capture_output=True, timeout=IP_TIMEOUT, check=False
            )


def test_echo_between_two_machines(spawn: Spawn, machines: Machines) -> None:
    server = spawn(machines.exec_in(machines.a, cli("echo-server", "--listen", f"{ADDRESS_A}:0")))
    port = server.port()
    client = spawn(machines.exec_in(machines.b, cli("echo", ADDRESS_A, str(port), "--count", "3")))
    code, out = client.finish(RUN_TIMEOUT)
    assert code == 0, client.stderr()
    assert f"--- {ADDRESS_A}:{port}: 3 round trips, all echoed intact ---" in out
    server.wait_for(rf"connection #1 from {ADDRESS_B}:\d+ closed: echoed 192 bytes")


def test_cat_between_two_machines(spawn: Spawn, machines: Machines, tmp_path: Path) -> None:
    to_a, to_b = random.Random(4).randbytes(500_000), random.Random(5).randbytes(300_000)
    (tmp_path / "a.in").write_bytes(to_b)
    (tmp_path / "b.in").write_bytes(to_a)
    with (
        open(tmp_path / "a.in", "rb") as a_in,
        open(tmp_path / "a.out", "wb") as a_out,
        open(tmp_path / "b.in", "rb") as b_in,
        open(tmp_path / "b.out", "wb") as b_out,
    ):
        a = spawn(machines.exec_in(machines.a, cli("cat", "-l", str(0))), stdin=a_in, stdout=a_out)
        port = a.port()
        b = spawn(
            machines.exec_in(machines.b, cli("cat", ADDRESS_A, str(port))),
            stdin=b_in,
            stdout=b_out,
        )
        assert b.finish(RUN_TIMEOUT)[0] == 0, b.stderr()
        assert a.finish(RUN_TIMEOUT)[0] == 0, a.stderr()
    assert sha256((tmp_path / "a.out").read_bytes()) == sha256(to_a)
    assert sha256((tmp_path / "b.out").read_bytes()) == sha256(to_b)


def test_tunnel_between_two_machines(spawn: Spawn, machines: Machines) -> None:
    nbytes = 2 * 1024 * 1024
    # Machine A runs the service (on its own loopback) and the tunnel server; machine B the
    # tunnel client and the service's user.
    service = spawn(
        machines.exec_in(machines.a, [*PEER, "server", "127.0.0.1", "0", str(nbytes), "2"])
    )
    service_port = int(service.wait_for(r"READY (\d+)").group(1))
    server = spawn(
        machines.exec_in(
            machines.a,
            cli(
                *("tunnel", "server", "--listen", f"{ADDRESS_A}:0"),
                *("--to", f"127.0.0.1:{service_port}"),
            ),
        )
    )
    udp_port = server.port("UDP")
    client = spawn(
        machines.exec_in(
            machines.b, cli("tunnel", "client", "--listen", "0", "--to", f"{ADDRESS_A}:{udp_port}")
        )
    )
    port = client.port("kernel TCP")
    user = spawn(
        machines.exec_in(
            machines.b, [*PEER, "client", "127.0.0.1", str(port), str(nbytes), str(CLIENT_SEED)]
        )
    )
    check_exchange(peer_result(user, RUN_TIMEOUT), peer_result(service, RUN_TIMEOUT), nbytes)
    server.wait_for(rf"tunnel #1 from {ADDRESS_B}:\d+: done, {2 * nbytes} bytes")
