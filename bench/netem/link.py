"""Two hosts joined by a link with netem impairments, one spec per direction.

``open_link(spec, reverse_spec, mode)`` gives a :class:`Link` whose ``client_cmd``/``server_cmd``
wrap a command to run on either host, and whose :meth:`Link.report` tells what the link did
and whether the run is valid. Modes:

``netem``
    Where the kernel has ``sch_netem``: a client and a server network namespace joined by a
    veth pair, ``tc qdisc add dev ... root netem SPEC`` on the client's end and the reverse
    spec on the server's.
``emulated``
    Where it has not: a TUN device in each namespace and one forwarding process
    (:mod:`bench.netem.forwarder`, a separate OS process) moving the IP packets between them
    through :class:`~bench.netem.emulator.NetemQueue`. Kernel TCP and UDP cross it alike.
``proxy``
    Without root: a UDP relay on 127.0.0.1 applying the same specs (utcp-only scenarios;
    kernel TCP comparisons need root). ``port_for_client(server_port)`` opens a relay port.

``auto`` picks netem, else emulated when root with /dev/net/tun, else proxy. Namespaces are
named ``utcpemu-<pid>-<n>c``/``...s`` and are deleted on exit, error or KeyboardInterrupt;
those of a process that was killed outright are deleted by the next ``open_link``.
Addresses are in RFC 2544's benchmarking range 198.18.0.0/15: the client is
:data:`CLIENT_ADDRESS`, the server :data:`SERVER_ADDRESS`.

An emulated run is marked invalid when a TUN device's queue overflowed (the forwarder fell
behind and the kernel dropped packets the spec did not), when its busiest window's packet
rate exceeds ``max_load`` (80 %) of the forwarder's ceiling (the lower of the rate
calibrated once per process and the packets this run moved per second of the forwarder's
work), or when the forwarder's p99 release lateness exceeds ``timing_bound_us`` (1 ms):
then the link, not the stacks, shaped the run.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from utcp.testing._tun import _open_tun_in_netns

from .spec import parse_spec

Mode = Literal["auto", "netem", "emulated", "proxy"]

CLIENT_ADDRESS = "198.18.1.1"
SERVER_ADDRESS = "198.18.2.1"
PREFIX_LEN = 16  # 198.18.0.0/16: the whole other side is through the link
NETNS_PREFIX = "utcpemu"
TUN_NAME = "emu0"
MTU = 1500
DEFAULT_TIMING_BOUND_US = 1000
DEFAULT_MAX_LOAD = 0.8
_COMMAND_TIMEOUT = 10.0
_REPO_ROOT = Path(__file__).resolve().parents[2]
_counter = itertools.count()
_netem_available: bool | None = None
_ceiling: dict[str, Any] | None = None


class LinkUnavailable(Exception):
    """The requested mode cannot run here (not root, no TUN, no sch_netem...)."""


@dataclass
class LinkReport:
    """What the link did. ``packets`` counts packets offered to the link in both directions,
    ``delivered`` those released (duplicates included); drops are by cause."""

    mode: str
    spec: str
    reverse_spec: str
    packets: int = 0
    delivered: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    reordered: int = 0
    corrupted: int = 0
    timing_error_p50_us: int | None = None
    timing_error_p99_us: int | None = None
    timing_error_max_us: int | None = None
    timing_bound_us: int | None = None
    ceiling_pps: float | None = None  # the lower of the calibrated and the effective one
    calibrated_ceiling_pps: float | None = None  # measured once, on datagram socket pairs
    peak_pps: float | None = None
    peak_busy: float | None = None  # the busiest window's fraction of time spent forwarding
    valid: bool = True
    invalid_reason: str | None = None
    notes: list[str] = field(default_factory=list)
    scheduling: str | None = None  # the forwarder's: "fifo" (SCHED_FIFO) or "normal"
    forward: dict[str, int] = field(default_factory=dict)  # client -> server queue counters
    reverse: dict[str, int] = field(default_factory=dict)  # server -> client

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, check=False
    )
    if check and done.returncode != 0:
        raise OSError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done


def _delete_netns(name: str) -> None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        _run(["ip", "netns", "del", name], check=False)


def remove_stale_namespaces() -> list[str]:
    """Delete the namespaces of links whose process died without cleaning up (killed by
    SIGKILL, say): ``utcpemu-<pid>-...`` where no process ``pid`` runs. Returns their names."""
    done = _run(["ip", "netns", "list"], check=False)
    stale = []
    for line in done.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != NETNS_PREFIX or not parts[1].isdigit():
            continue
        if not os.path.exists(f"/proc/{parts[1]}"):
            _delete_netns(name)
            stale.append(name)
    return stale


def _can_use_namespaces() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "the iproute2 'ip' command is missing"
    return None


def netem_available() -> bool:
    """Whether ``tc qdisc add ... netem`` works, tried once on a veth pair inside a
    throwaway namespace (the host's interfaces are never touched)."""
    global _netem_available
    if _netem_available is None:
        _netem_available = False
        if _can_use_namespaces() is None and shutil.which("tc") is not None:
            probe = f"{NETNS_PREFIX}-{os.getpid()}-{next(_counter)}p"
            try:
                _run(["ip", "netns", "add", probe])
                _run(["ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1"])
                tried = _run(
                    [
                        "tc",
                        "-n",
                        probe,
                        "qdisc",
                        "add",
                        "dev",
                        "p0",
                        "root",
                        "netem",
                        "delay",
                        "1ms",
                    ],
                    check=False,
                )
                _netem_available = tried.returncode == 0
            except (OSError, subprocess.SubprocessError):
                _netem_available = False
            finally:
                _delete_netns(probe)
    return _netem_available


def forwarder_ceiling() -> dict[str, Any]:
    """The forwarder's packet-rate ceiling on this machine, measured once per process."""
    global _ceiling
    if _ceiling is None:
        done = subprocess.run(
            [sys.executable, "-m", "bench.netem.forwarder", "calibrate", "--realtime"],
            capture_output=True,
            text=True,
            timeout=60,
            env=_forwarder_env(),
            check=True,
        )
        _ceiling = json.loads(done.stdout.strip().splitlines()[-1])
    return _ceiling


def _forwarder_env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(_REPO_ROOT) + (os.pathsep + path if path else "")
    return env


class _Forwarder:
    """The forwarding process and its line-based control channel."""

    def __init__(self, argv: list[str], pass_fds: Sequence[int] = ()) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.netem.forwarder", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=tuple(pass_fds),
            env=_forwarder_env(),
        )
        self._buffer = b""
        try:
            ready = self._line()
            if ready != "ready":
                raise OSError(f"the forwarder did not start: {ready!r} {self._stderr()}")
        except BaseException:
            self.kill()
            raise

    def _stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read().decode(errors="replace")[-2000:]

    def _line(self) -> str:
        stdout = self.process.stdout
        assert stdout is not None
        fd = stdout.fileno()
        while b"\n" not in self._buffer:
            readable, _, _ = select.select([fd], [], [], _COMMAND_TIMEOUT)
            if not readable:
                raise OSError("the forwarder did not answer in time")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise OSError(f"the forwarder exited: {self._stderr()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def ask(self, command: str) -> str:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(command.encode() + b"\n")
        stdin.flush()
        return self._line()

    def stop(self) -> dict[str, Any] | None:
        """Ask for the final report and let the process exit; kill it if it does not."""
        report: dict[str, Any] | None = None
        try:
            if self.process.poll() is None:
                report = json.loads(self.ask("stop"))
                self.process.wait(timeout=_COMMAND_TIMEOUT)
        except (OSError, ValueError, subprocess.SubprocessError):
            report = None
        finally:
            self.kill()
        return report

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # this process's own child, by its pid
        with contextlib.suppress(subprocess.SubprocessError):
            self.process.wait(timeout=_COMMAND_TIMEOUT)
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class Link:
    """An open link (module docstring). Use :func:`open_link`."""

    def __init__(
        self,
        mode: str,
        spec: str,
        reverse_spec: str,
        *,
        timing_bound_us: int = DEFAULT_TIMING_BOUND_US,
        max_load: float = DEFAULT_MAX_LOAD,
    ) -> None:
        self.mode = mode
        self.spec = spec
        self.reverse_spec = reverse_spec
        self.timing_bound_us = timing_bound_us
        self.max_load = max_load
        self.client_netns: str | None = None
        self.server_netns: str | None = None
        self.server_host = "127.0.0.1"
        self.client_connect_host = "127.0.0.1"
        self._forwarder: _Forwarder | None = None
        self._final: dict[str, Any] | None = None
        self._ports: dict[int, int] = {}
        self._ceiling: float | None = None
        self._netem_final: LinkReport | None = None  # read before the namespaces go

    def client_cmd(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run on the client host."""
        return self._in(self.client_netns, argv)

    def server_cmd(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run on the server host."""
        return self._in(self.server_netns, argv)

    @staticmethod
    def _in(netns: str | None, argv: Sequence[str]) -> list[str]:
        return list(argv) if netns is None else ["ip", "netns", "exec", netns, *argv]

    def port_for_client(self, server_port: int) -> int:
        """The port the client connects to for the server's ``server_port``: the same one,
        except in proxy mode, where a relay port is opened (once per server port)."""
        if self.mode != "proxy":
            return server_port
        if server_port not in self._ports:
            assert self._forwarder is not None
            answer = self._forwarder.ask(f"map {server_port}")
            if not answer.startswith("port "):
                raise OSError(f"the proxy refused to map port {server_port}: {answer}")
            self._ports[server_port] = int(answer.split()[1])
        return self._ports[server_port]

    def report(self) -> LinkReport:
        """What the link did so far (or in all, once closed)."""
        report = LinkReport(self.mode, self.spec, self.reverse_spec)
        if self.mode == "proxy":
            report.notes.append("kernel TCP comparisons need root (proxy mode carries UDP only)")
        if self.mode == "netem":
            if self._netem_final is not None:
                return self._netem_final
            self._fill_from_tc(report)
            return report
        raw = self._final
        if raw is None and self._forwarder is not None:
            raw = json.loads(self._forwarder.ask("stats"))
            if self.mode == "emulated":
                raw["tun_queue_dropped"] = self._tun_queue_dropped()
        if raw is None:
            report.valid = False
            report.invalid_reason = "the forwarder gave no report"
            return report
        self._fill_from_forwarder(report, raw)
        return report

    def _fill_from_forwarder(self, report: LinkReport, raw: dict[str, Any]) -> None:
        fwd, rev = raw["forward"], raw["reverse"]
        report.forward, report.reverse = fwd, rev
        report.packets = fwd["received"] + rev["received"]
        report.delivered = fwd["sent"] + rev["sent"]
        report.drops = {
            "loss": fwd["dropped_loss"] + rev["dropped_loss"],
            "limit": fwd["dropped_limit"] + rev["dropped_limit"],
            "write_error": raw["write_errors"],
        }
        tun_dropped = raw.get("tun_queue_dropped")
        if tun_dropped is not None:
            report.drops["tun_queue"] = tun_dropped
        report.duplicates = fwd["duplicated"] + rev["duplicated"]
        report.reordered = fwd["reordered"] + rev["reordered"]
        report.corrupted = fwd["corrupted"] + rev["corrupted"]
        report.timing_error_p50_us = raw["timing_error_p50_us"]
        report.timing_error_p99_us = raw["timing_error_p99_us"]
        report.timing_error_max_us = raw["timing_error_max_us"]
        report.timing_bound_us = self.timing_bound_us
        report.scheduling = raw["scheduling"]
        report.peak_pps = raw["peak_pps"]
        report.peak_busy = raw["peak_busy"]
        # The calibrated ceiling leaves out the kernel's work on each TUN write (the receiving
        # stack runs in the writer's context); the packets moved per second of work on this
        # run include it. The lower of the two is the ceiling.
        ceilings = [c for c in (self._ceiling, raw["effective_ceiling_pps"]) if c]
        report.calibrated_ceiling_pps = self._ceiling
        report.ceiling_pps = round(min(ceilings), 1) if ceilings else None
        reasons = []
        ceiling = report.ceiling_pps
        if ceiling and raw["peak_pps"] > self.max_load * ceiling:
            reasons.append(
                f"peak {raw['peak_pps']:.0f} pkt/s is above {self.max_load:.0%} of the "
                f"forwarder's ceiling ({ceiling:.0f} pkt/s)"
            )
        if tun_dropped:
            reasons.append(
                f"{tun_dropped} packets overflowed a TUN queue before the forwarder read them"
            )
        if raw["timing_error_p99_us"] > self.timing_bound_us:
            reasons.append(
                f"p99 release lateness {raw['timing_error_p99_us']} us exceeds "
                f"{self.timing_bound_us} us"
            )
        if reasons:
            report.valid = False
            report.invalid_reason = "; ".join(reasons)

    def _fill_from_tc(self, report: LinkReport) -> None:
        for netns, dev, key in (
            (self.client_netns, "vc", "forward"),
            (self.server_netns, "vs", "reverse"),
        ):
            if netns is None:
                continue
            done = _run(["tc", "-n", netns, "-s", "-j", "qdisc", "show", "dev", dev], check=False)
            with contextlib.suppress(ValueError, IndexError, KeyError):
                qdisc = next(q for q in json.loads(done.stdout) if q.get("kind") == "netem")
                counters = {"sent": int(qdisc["packets"]), "dropped": int(qdisc["drops"])}
                setattr(report, key, counters)
                report.delivered += counters["sent"]
                report.drops["qdisc"] = report.drops.get("qdisc", 0) + counters["dropped"]
        report.packets = report.delivered + report.drops.get("qdisc", 0)
        report.notes.append("kernel sch_netem: timing error and ceiling are the kernel's")

    def _tun_queue_dropped(self) -> int | None:
        """Packets the kernel dropped because a TUN device's queue was full (the forwarder
        fell behind): the devices' tx_dropped, client and server. None if unreadable."""
        total = 0
        for netns in (self.client_netns, self.server_netns):
            if netns is None:
                return None
            done = _run(["ip", "-n", netns, "-s", "-j", "link", "show", TUN_NAME], check=False)
            try:
                total += int(json.loads(done.stdout)[0]["stats64"]["tx"]["dropped"])
            except (ValueError, IndexError, KeyError, TypeError):
                return None
        return total

    def _close(self) -> None:
        try:
            if self.mode == "netem" and self.client_netns is not None:
                self._netem_final = self.report()
            if self._forwarder is not None:
                forwarder, self._forwarder = self._forwarder, None
                tun_dropped = self._tun_queue_dropped() if self.mode == "emulated" else None
                self._final = forwarder.stop()
                if self._final is not None:
                    self._final["tun_queue_dropped"] = tun_dropped
        finally:
            for netns in (self.client_netns, self.server_netns):
                if netns is not None:
                    _delete_netns(netns)


def _make_netns_pair(link: Link) -> tuple[str, str]:
    base = f"{NETNS_PREFIX}-{os.getpid()}-{next(_counter)}"
    link.client_netns, link.server_netns = f"{base}c", f"{base}s"
    for netns in (link.client_netns, link.server_netns):
        _run(["ip", "netns", "add", netns])
        _run(["ip", "-n", netns, "link", "set", "lo", "up"])
        # No IPv6 on the link: router solicitations would be forwarded and counted.
        _run(
            [
                "ip", "netns", "exec", netns, "sysctl", "-q", "-w",
                "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
            ],
            check=False,
        )  # fmt: skip
    link.server_host = link.client_connect_host = SERVER_ADDRESS
    return link.client_netns, link.server_netns


def _address(netns: str, dev: str, address: str) -> None:
    _run(["ip", "-n", netns, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", dev])
    _run(["ip", "-n", netns, "link", "set", dev, "mtu", str(MTU), "txqueuelen", "1000"])
    _run(["ip", "-n", netns, "link", "set", dev, "up"])


def _open_netem(link: Link) -> None:
    client, server = _make_netns_pair(link)
    _run(
        [
            "ip",
            "-n",
            client,
            "link",
            "add",
            "vc",
            "type",
            "veth",
            "peer",
            "name",
            "vs",
            "netns",
            server,
        ]
    )
    _address(client, "vc", CLIENT_ADDRESS)
    _address(server, "vs", SERVER_ADDRESS)
    for netns, dev, spec in ((client, "vc", link.spec), (server, "vs", link.reverse_spec)):
        args = parse_spec(spec).to_tc_args()
        _run(["tc", "-n", netns, "qdisc", "add", "dev", dev, "root", "netem", *args])


def _open_emulated(link: Link, seed: int) -> None:
    if not os.path.exists("/dev/net/tun"):
        raise LinkUnavailable("/dev/net/tun is missing")
    client, server = _make_netns_pair(link)
    fds: list[int] = []
    try:
        for netns, address in ((client, CLIENT_ADDRESS), (server, SERVER_ADDRESS)):
            fds.append(_open_tun_in_netns(netns, TUN_NAME))
            _address(netns, TUN_NAME, address)
        link._ceiling = forwarder_ceiling()["ceiling_pps"]
        argv = ["tun", "--fds", f"{fds[0]},{fds[1]}", "--seed", str(seed), "--realtime"]
        argv += ["--spec", link.spec, "--reverse-spec", link.reverse_spec]
        link._forwarder = _Forwarder(argv, pass_fds=fds)
    finally:
        for fd in fds:  # the forwarder holds its own copies; the devices live as long as it
            os.close(fd)


@contextlib.contextmanager
def open_link(
    spec: str = "",
    reverse_spec: str | None = None,
    mode: Mode = "auto",
    *,
    seed: int = 1,
    timing_bound_us: int = DEFAULT_TIMING_BOUND_US,
    max_load: float = DEFAULT_MAX_LOAD,
) -> Iterator[Link]:
    """A link with ``spec`` client -> server and ``reverse_spec`` (default: the same)
    server -> client. Raises ValueError on a bad spec and :class:`LinkUnavailable` when the
    mode cannot run here; everything created is removed on exit."""
    reverse = spec if reverse_spec is None else reverse_spec
    parse_spec(spec)
    parse_spec(reverse)
    why_not = _can_use_namespaces()
    if mode == "auto":
        if why_not is not None or not os.path.exists("/dev/net/tun"):
            mode = "proxy"
        else:
            mode = "netem" if netem_available() else "emulated"
    if mode in ("netem", "emulated") and why_not is not None:
        raise LinkUnavailable(f"{mode} mode {why_not}")
    if mode == "netem" and not netem_available():
        raise LinkUnavailable("this kernel has no sch_netem (tc answers 'unknown qdisc')")
    link = Link(mode, spec, reverse, timing_bound_us=timing_bound_us, max_load=max_load)
    if mode != "proxy":
        remove_stale_namespaces()
    try:
        if mode == "netem":
            _open_netem(link)
        elif mode == "emulated":
            _open_emulated(link, seed)
        else:
            link._ceiling = forwarder_ceiling()["ceiling_pps"]
            argv = ["proxy", "--seed", str(seed), "--spec", spec, "--reverse-spec", reverse]
            link._forwarder = _Forwarder([*argv, "--realtime"])
        yield link
    finally:
        link._close()
