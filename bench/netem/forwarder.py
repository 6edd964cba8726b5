"""The link's forwarding process: packets through two :class:`NetemQueue` s, one per direction.

Run by :mod:`bench.netem.link`, never imported by the benchmark's own process (a separate OS
process, so the benchmark's interpreter lock never delays a packet)::

    python -m bench.netem.forwarder tun --fds A,B --spec S --reverse-spec R --seed N
    python -m bench.netem.forwarder proxy --spec S --reverse-spec R --seed N
    python -m bench.netem.forwarder calibrate

``tun``: A and B are inherited TUN descriptors (client and server namespace); an IP packet
read from A goes through the ``spec`` queue to B, from B through the ``reverse-spec`` queue
to A. ``proxy``: a UDP relay on 127.0.0.1; the control line ``map PORT`` opens a port that
relays to 127.0.0.1:PORT (answer ``port N``), client to server through ``spec``.
``calibrate`` prints the packet rate this machine's forwarding loop sustains (JSON).

Control is line based on stdin/stdout: the process prints ``ready``, then answers ``stats``
with one JSON line (the report) and ``stop`` with the final report before it exits; end of
file on stdin also stops it. The timing error of every released packet (the time it was
written minus the time netem scheduled it) goes into a histogram at microsecond resolution.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from .emulator import NetemQueue
from .spec import parse_spec

_BATCH = 64  # packets read from one descriptor per wake-up
_MAX_PACKET = 65535
_WINDOW = 0.25  # seconds per packet-rate window (peak_pps is the busiest window)
_PR_SET_TIMERSLACK = 29  # linux/prctl.h
_FIFO_PRIORITY = 10
# What netem's rate would count beyond what the forwarder sees: on a veth, netem measures
# the Ethernet frame; a TUN packet lacks the 14-byte Ethernet header, a proxied datagram
# also its IPv4 (20) and UDP (8) headers.
TUN_FRAMING = 14
PROXY_FRAMING = 14 + 20 + 8


def _realtime() -> str:
    """Run under SCHED_FIFO when allowed (root): on a busy machine a normal-priority process
    waits milliseconds for a CPU after its timer fires, and every packet would be late by
    that much. The forwarder sleeps in select() whenever no packet is due, so it takes CPU
    only for the packets it moves (and Linux's RT throttling caps it regardless)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(_FIFO_PRIORITY))
    except (OSError, AttributeError):
        return "normal"
    return "fifo"


def _tight_timer_slack() -> None:
    """Ask the kernel for 1 ns of timer slack (default 50 us) so select() wakes on time."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)


class TimingHistogram:
    """Release lateness in whole microseconds: count per value."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0

    def add(self, late_seconds: float) -> None:
        us = max(0, round(late_seconds * 1e6))
        self.counts[us] = self.counts.get(us, 0) + 1
        self.total += 1

    def quantile(self, q: float) -> int:
        if not self.total:
            return 0
        rank = q * (self.total - 1)
        seen = 0
        for value in sorted(self.counts):
            seen += self.counts[value]
            if seen > rank:
                return value
        return max(self.counts)

    def to_dict(self) -> dict[str, int]:
        return {
            "timing_samples": self.total,
            "timing_error_p50_us": self.quantile(0.5),
            "timing_error_p99_us": self.quantile(0.99),
            "timing_error_max_us": max(self.counts, default=0),
        }


class LoadMeter:
    """Packets and working time per fixed window of the monotonic clock; the busiest
    window's packet rate and working fraction, and the packets moved per second of work
    over the whole run (the forwarder's effective ceiling for this traffic)."""

    __slots__ = (
        "_busy",
        "_count",
        "_slot",
        "busy_total",
        "packets_total",
        "peak_busy",
        "peak_pps",
        "window",
    )

    def __init__(self, window: float = _WINDOW) -> None:
        self.window = window
        self._slot = -1
        self._count = 0
        self._busy = 0.0
        self.peak_pps = 0.0
        self.peak_busy = 0.0
        self.packets_total = 0
        self.busy_total = 0.0

    def note(self, packets: int, busy: float, now: float) -> None:
        slot = int(now / self.window)
        if slot != self._slot:
            self._slot, self._count, self._busy = slot, 0, 0.0
        self._count += packets
        self._busy += busy
        self.packets_total += packets
        self.busy_total += busy
        self.peak_pps = max(self.peak_pps, self._count / self.window)
        self.peak_busy = max(self.peak_busy, min(1.0, self._busy / self.window))

    def effective_ceiling(self) -> float | None:
        """Packets per second of work, once enough packets passed to say (else None)."""
        if self.packets_total < 200 or self.busy_total <= 0:
            return None
        return self.packets_total / self.busy_total


class _Relay:
    """What both relays measure: release lateness, load, write errors."""

    def __init__(self) -> None:
        self.timing = TimingHistogram()
        self.meter = LoadMeter()
        self.write_errors = 0
        self.scheduling = "normal"  # or "fifo" (SCHED_FIFO, see _realtime)

    def _report(self, forward: NetemQueue[Any], reverse: NetemQueue[Any]) -> dict[str, Any]:
        return {
            "forward": forward.stats.to_dict(),
            "reverse": reverse.stats.to_dict(),
            "write_errors": self.write_errors,
            "scheduling": self.scheduling,
            "peak_pps": round(self.meter.peak_pps, 1),
            "peak_busy": round(self.meter.peak_busy, 3),
            "effective_ceiling_pps": self.meter.effective_ceiling(),
            **self.timing.to_dict(),
        }


class TunForwarder(_Relay):
    """Moves packets between two descriptors (TUN devices, or datagram sockets when
    calibrating) through one :class:`NetemQueue` per direction."""

    def __init__(self, fd_a: int, fd_b: int, spec: str, reverse_spec: str, seed: int) -> None:
        super().__init__()
        self.fds = (fd_a, fd_b)
        # A packet read from fd_a goes to fd_b through the forward queue, and back.
        self.queues: dict[int, NetemQueue[int]] = {
            fd_a: NetemQueue(parse_spec(spec), seed=seed, framing=TUN_FRAMING),
            fd_b: NetemQueue(parse_spec(reverse_spec), seed=seed + 1, framing=TUN_FRAMING),
        }
        self.out = {fd_a: fd_b, fd_b: fd_a}

    def read_from(self, fd: int, now: float) -> int:
        queue, dst, clock = self.queues[fd], self.out[fd], time.monotonic
        for count in range(_BATCH):
            try:
                packet = os.read(fd, _MAX_PACKET)
            except (BlockingIOError, InterruptedError):
                return count
            # Each packet's own arrival time: the later ones of a batch were read later.
            queue.enqueue(packet, clock() if count else now, dst)
        return _BATCH

    def flush(self, now: float) -> None:
        clock, timing = time.monotonic, self.timing
        for queue in self.queues.values():
            for due, packet, dst in queue.release(now):
                timing.add(clock() - due)
                try:
                    os.write(dst, packet)
                except OSError:
                    self.write_errors += 1

    def next_deadline(self) -> float | None:
        dues = [d for q in self.queues.values() if (d := q.next_release()) is not None]
        return min(dues, default=None)

    def report(self) -> dict[str, Any]:
        return self._report(self.queues[self.fds[0]], self.queues[self.fds[1]])


class UdpProxy(_Relay):
    """The UDP impairment relay on 127.0.0.1 (module docstring, ``proxy``)."""

    def __init__(self, spec: str, reverse_spec: str, seed: int) -> None:
        super().__init__()
        self.to_server: NetemQueue[socket.socket] = NetemQueue(
            parse_spec(spec), seed=seed, framing=PROXY_FRAMING
        )
        self.to_client: NetemQueue[tuple[socket.socket, tuple[str, int]]] = NetemQueue(
            parse_spec(reverse_spec), seed=seed + 1, framing=PROXY_FRAMING
        )
        self.listeners: dict[int, tuple[socket.socket, int]] = {}
        self.upstreams: dict[tuple[int, tuple[str, int]], socket.socket] = {}
        # upstream descriptor -> (upstream socket, listening socket, client address)
        self.replies: dict[int, tuple[socket.socket, socket.socket, tuple[str, int]]] = {}

    def open_port(self, server_port: int) -> int:
        sock = _udp_socket()
        sock.bind(("127.0.0.1", 0))
        self.listeners[sock.fileno()] = (sock, server_port)
        return int(sock.getsockname()[1])

    def fds(self) -> list[int]:
        return [*self.listeners, *self.replies]

    def read_from(self, fd: int, now: float) -> int:
        if fd in self.listeners:
            sock, server_port = self.listeners[fd]
            for count in range(_BATCH):
                try:
                    data, client = sock.recvfrom(_MAX_PACKET)
                except (BlockingIOError, InterruptedError):
                    return count
                except OSError:
                    continue
                upstream = self.upstreams.get((fd, client))
                if upstream is None:
                    upstream = _udp_socket()
                    upstream.connect(("127.0.0.1", server_port))
                    self.upstreams[(fd, client)] = upstream
                    self.replies[upstream.fileno()] = (upstream, sock, client)
                self.to_server.enqueue(data, time.monotonic() if count else now, upstream)
            return _BATCH
        upstream_sock, listener, client = self.replies[fd]
        back = (listener, client)
        for count in range(_BATCH):
            try:
                data = upstream_sock.recv(_MAX_PACKET)
            except (BlockingIOError, InterruptedError):
                return count
            except OSError:
                continue
            self.to_client.enqueue(data, time.monotonic() if count else now, back)
        return _BATCH

    def flush(self, now: float) -> None:
        clock = time.monotonic
        for due, data, upstream in self.to_server.release(now):
            self.timing.add(clock() - due)
            try:
                upstream.send(data)
            except OSError:
                self.write_errors += 1
        for due, data, (sock, client) in self.to_client.release(now):
            self.timing.add(clock() - due)
            try:
                sock.sendto(data, client)
            except OSError:
                self.write_errors += 1

    def next_deadline(self) -> float | None:
        dues = [d for q in (self.to_server, self.to_client) if (d := q.next_release()) is not None]
        return min(dues, default=None)

    def report(self) -> dict[str, Any]:
        return self._report(self.to_server, self.to_client)


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
    sock.setblocking(False)
    return sock


def _serve(
    engine: TunForwarder | UdpProxy,
    fds: Callable[[], list[int]],
    on_command: Callable[[str], str | None],
) -> None:
    """The event loop: wait for packets, the next release time or a control line."""
    control_fd = sys.stdin.fileno()
    pending = b""
    _say("ready")
    while True:
        deadline = engine.next_deadline()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        readable, _, _ = select.select([control_fd, *fds()], [], [], timeout)
        woke = time.monotonic()
        packets = 0
        for fd in readable:
            if fd == control_fd:
                chunk = os.read(control_fd, 4096)
                if not chunk:
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    answer = on_command(line.decode().strip())
                    if answer is None:
                        _say(json.dumps(engine.report()))
                        return
                    _say(answer)
            else:
                packets += engine.read_from(fd, woke)
        engine.flush(time.monotonic())
        now = time.monotonic()
        engine.meter.note(packets, now - woke, now)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def calibrate(trials: int = 3, duration: float = 0.15, size: int = 1200) -> dict[str, Any]:
    """Packets per second the forwarding loop moves on this machine through a clean queue.

    Datagram socket pairs stand in for the TUN devices: a burst of 16 packets is fed in,
    forwarded (one select(), reads, queue, writes, timing bookkeeping) and drained, over and
    over. Feeding and draining are counted against the forwarder, which makes the figure
    conservative; the kernel's receive work inside a real TUN write is not in it (the link
    also measures packets per second of work on the real traffic). The best of ``trials``
    runs is kept: on a shared machine a slower run only says the loop was preempted.
    """
    inject, fwd_in = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    fwd_out, drain = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    socks = (inject, fwd_in, fwd_out, drain)
    try:
        for sock in socks:
            sock.setblocking(False)
        packet = bytes(size)
        fwd = TunForwarder(fwd_in.fileno(), fwd_out.fileno(), "", "", 0)
        rates = []
        for _ in range(trials):
            moved = 0
            start = time.perf_counter()
            while time.perf_counter() - start < duration:
                for _ in range(16):
                    inject.send(packet)
                select.select([fwd_in.fileno()], [], [], 0)
                now = time.monotonic()
                fwd.read_from(fwd_in.fileno(), now)
                fwd.flush(now)
                with contextlib.suppress(BlockingIOError):
                    while True:
                        drain.recv(_MAX_PACKET)
                        moved += 1
            rates.append(moved / (time.perf_counter() - start))
        return {"ceiling_pps": round(max(rates), 1), "trials_pps": [round(r) for r in rates],
                "packet_size": size}  # fmt: skip
    finally:
        for sock in socks:
            sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.netem.forwarder")
    parser.add_argument("mode", choices=("tun", "proxy", "calibrate"))
    parser.add_argument("--fds", help="tun mode: the client and server TUN descriptors, A,B")
    parser.add_argument("--spec", default="")
    parser.add_argument("--reverse-spec", default="")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--realtime", action="store_true", help="try SCHED_FIFO")
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group; the parent decides when the link ends (and
    # asks for the final report first), and end of file on stdin covers the parent's death.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    scheduling = _realtime() if args.realtime else "normal"
    if args.mode == "calibrate":
        _say(json.dumps({**calibrate(), "scheduling": scheduling}))
        return 0
    _tight_timer_slack()
    if args.mode == "tun":
        fd_a, fd_b = (int(x) for x in args.fds.split(","))
        for fd in (fd_a, fd_b):
            os.set_blocking(fd, False)
        tun = TunForwarder(fd_a, fd_b, args.spec, args.reverse_spec, args.seed)
        tun.scheduling = scheduling

        def tun_command(line: str) -> str | None:
            if line == "stats":
                return json.dumps(tun.report())
            return None if line == "stop" else "error unknown command"

        _serve(tun, lambda: list(tun.fds), tun_command)
        return 0
    proxy = UdpProxy(args.spec, args.reverse_spec, args.seed)
    proxy.scheduling = scheduling

    def proxy_command(line: str) -> str | None:
        if line == "stats":
            return json.dumps(proxy.report())
        if line.startswith("map "):
            return f"port {proxy.open_port(int(line.split()[1]))}"
        return None if line == "stop" else "error unknown command"

    _serve(proxy, proxy.fds, proxy_command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
