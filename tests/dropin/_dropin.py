"""Helpers of the drop-in tests: proof that a port's bytes crossed UDP, not kernel TCP."""

from __future__ import annotations

import errno
import socket
import ssl
from pathlib import Path

import trustme

from utcp import Endpoint

# Config's IPv4 MSS for a 1500-byte path (WIRE.md "Sizes").
MSS = 1452
# The largest payload one datagram carries on 127.0.0.1: the MSS of the loopback route
# (MTU 65536, capped at one UDP datagram's payload), which utcp announces there.
LOOPBACK_MSS = 65487


def kernel_tcp_ports() -> set[int]:
    """Local ports of every kernel TCP socket on this machine (any state)."""
    ports: set[int] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(name)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local = line.split()[1]
            ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def assert_no_kernel_tcp(port: int, host: str = "127.0.0.1") -> None:
    """No kernel TCP socket uses ``port``, and a kernel TCP connect to it is refused."""
    assert port not in kernel_tcp_ports(), f"a kernel TCP socket uses port {port}"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(5)
        code = probe.connect_ex((host, port))
    assert code == errno.ECONNREFUSED, f"kernel TCP connect to {port}: {errno.errorcode[code]}"


def assert_carried(endpoint: Endpoint | None, received: int, sent: int = 0) -> None:
    """The utcp endpoint received (and sent) at least the datagrams that ``received`` (and
    ``sent``) bytes of payload need."""
    assert endpoint is not None
    stats = endpoint.host.stats
    assert stats.datagrams_received >= received // LOOPBACK_MSS, stats
    assert stats.datagrams_sent >= max(1, sent // LOOPBACK_MSS), stats


class Tls:
    """A throwaway CA and a certificate for 127.0.0.1 / localhost (from trustme)."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert("127.0.0.1", "localhost")

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def write(self, directory: Path) -> tuple[Path, Path, Path]:
        """(certificate chain, key, CA) as PEM files in ``directory``."""
        chain, key, ca = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
        self.cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
        self.cert.private_key_pem.write_to_path(str(key))
        self.ca.cert_pem.write_to_path(str(ca))
        return chain, key, ca
