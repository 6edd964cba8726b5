"""Small probes run on either host of a link (kernel sockets, one JSON line of results).

    python -m bench.netem.probe udp-echo --bind HOST --port P --seconds S
    python -m bench.netem.probe udp-ping --host H --port P --count N --interval SECONDS
    python -m bench.netem.probe udp-count --bind HOST --port P --idle SECONDS
    python -m bench.netem.probe udp-blast --host H --port P --pps R --seconds S --size B
    python -m bench.netem.probe tcp-sink --bind HOST --port P
    python -m bench.netem.probe tcp-send --host H --port P --bytes N

``udp-ping`` sends numbered datagrams and reports the echoes' round-trip times, how many
never came back (after waiting ``--linger`` seconds), and how many came back after a
later-numbered one (reordered).
``tcp-send`` sends N pseudo-random bytes and reports their SHA-256 with the kernel's smoothed
RTT (TCP_INFO ``tcpi_rtt``); ``tcp-sink`` reports the SHA-256 of what it received and the
time from its first byte to its last. Servers
print ``listening PORT`` once bound (``--port 0`` picks one).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import socket
import struct
import sys
import time
from typing import Any

_PING = struct.Struct("!Id")  # sequence number, send time
_TCP_INFO_RTT_OFFSET = 68  # struct tcp_info: tcpi_rtt (us) follows 8 u8 fields and 15 u32s


def udp_echo(bind: str, port: int, seconds: float) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind, port))
    print(f"listening {sock.getsockname()[1]}", flush=True)
    sock.settimeout(0.2)
    echoed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data, peer = sock.recvfrom(65535)
        except TimeoutError:
            continue
        sock.sendto(data, peer)
        echoed += 1
    return {"echoed": echoed}


def udp_ping(
    host: str, port: int, count: int, interval: float, size: int, linger: float
) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    sock.setblocking(False)
    rtts: dict[int, float] = {}
    reordered = 0
    highest = -1
    padding = bytes(max(0, size - _PING.size))

    def receive() -> None:
        nonlocal reordered, highest
        while True:
            try:
                data = sock.recv(65535)
            except (BlockingIOError, ConnectionRefusedError):
                return
            seq, sent = _PING.unpack_from(data)
            if seq in rtts:
                continue  # a duplicate
            rtts[seq] = time.monotonic() - sent
            if seq < highest:
                reordered += 1
            highest = max(highest, seq)

    start = time.monotonic()
    for seq in range(count):
        target = start + seq * interval
        while (now := time.monotonic()) < target:
            time.sleep(min(target - now, 0.001))
            receive()
        with contextlib.suppress(ConnectionRefusedError):
            sock.send(_PING.pack(seq, time.monotonic()) + padding)
        receive()
    end = time.monotonic() + linger
    while time.monotonic() < end and len(rtts) < count:
        time.sleep(0.002)
        receive()
    values = sorted(rtts.values())
    return {
        "sent": count,
        "received": len(rtts),
        "lost": count - len(rtts),
        "reordered": reordered,
        "rtt_median_ms": values[len(values) // 2] * 1e3 if values else None,
        "rtt_p10_ms": values[len(values) // 10] * 1e3 if values else None,
        "rtt_p90_ms": values[len(values) * 9 // 10] * 1e3 if values else None,
        "rtt_min_ms": values[0] * 1e3 if values else None,
        "rtt_max_ms": values[-1] * 1e3 if values else None,
    }


def udp_count(bind: str, port: int, idle: float) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((bind, port))
    print(f"listening {sock.getsockname()[1]}", flush=True)
    sock.settimeout(30.0)
    count = 0
    first = last = 0.0
    while True:
        try:
            sock.recv(65535)
        except TimeoutError:
            break
        last = time.monotonic()
        if not count:
            first = last
            sock.settimeout(idle)
        count += 1
    span = last - first
    return {"received": count, "seconds": span, "pps": count / span if span > 0 else 0.0}


def udp_blast(host: str, port: int, pps: float, seconds: float, size: int) -> dict[str, Any]:
    """Send ``size``-byte datagrams at ``pps`` (0: as fast as possible) for ``seconds``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    payload = bytes(size)
    start = time.monotonic()
    sent = errors = 0
    while (elapsed := time.monotonic() - start) < seconds:
        target = int(elapsed * pps) + 1 if pps else sent + 64
        while sent < target:
            try:
                sock.send(payload)
            except OSError:  # ENOBUFS: the device queue is full
                errors += 1
                break
            sent += 1
        if pps:
            time.sleep(0.0005)
    elapsed = time.monotonic() - start
    return {"sent": sent, "send_errors": errors, "seconds": elapsed, "pps": sent / elapsed}


def tcp_sink(bind: str, port: int) -> dict[str, Any]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((bind, port))
    listener.listen(1)
    print(f"listening {listener.getsockname()[1]}", flush=True)
    conn, _ = listener.accept()
    digest = hashlib.sha256()
    received = 0
    first = last = 0.0
    with conn:
        while chunk := conn.recv(1 << 16):
            last = time.monotonic()
            if not received:
                first = last
            digest.update(chunk)
            received += len(chunk)
        conn.sendall(b"ok")
    listener.close()
    return {"bytes": received, "sha256": digest.hexdigest(), "receive_seconds": last - first}


def tcp_send(host: str, port: int, size: int, seed: int) -> dict[str, Any]:
    data = random.Random(seed).randbytes(size)
    start = time.monotonic()
    conn = socket.create_connection((host, port), timeout=60)
    connected = time.monotonic()
    with conn:
        conn.sendall(data)
        info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        rtt_us = struct.unpack_from("I", info, _TCP_INFO_RTT_OFFSET)[0]
        conn.shutdown(socket.SHUT_WR)
        answer = conn.recv(16)
    return {
        "bytes": size,
        "sha256": hashlib.sha256(data).hexdigest(),
        "connect_ms": (connected - start) * 1e3,
        "seconds": time.monotonic() - start,
        "tcpi_rtt_ms": rtt_us / 1e3,
        "answer": answer.decode(errors="replace"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.netem.probe")
    parser.add_argument(
        "what", choices=("udp-echo", "udp-ping", "udp-count", "udp-blast", "tcp-sink", "tcp-send")
    )
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--linger", type=float, default=1.0, help="udp-ping: wait for echoes")
    parser.add_argument("--bytes", type=int, default=1 << 20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pps", type=float, default=0.0, help="udp-blast: 0 = flat out")
    parser.add_argument("--idle", type=float, default=0.5, help="udp-count: stop after")
    a = parser.parse_args(argv)
    if a.what == "udp-echo":
        result = udp_echo(a.bind, a.port, a.seconds)
    elif a.what == "udp-ping":
        result = udp_ping(a.host, a.port, a.count, a.interval, a.size, a.linger)
    elif a.what == "udp-count":
        result = udp_count(a.bind, a.port, a.idle)
    elif a.what == "udp-blast":
        result = udp_blast(a.host, a.port, a.pps, a.seconds, a.size)
    elif a.what == "tcp-sink":
        result = tcp_sink(a.bind, a.port)
    else:
        result = tcp_send(a.host, a.port, a.bytes, a.seed)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
