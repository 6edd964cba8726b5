"""The workload programs of ``python -m bench``: one server and one client per stack, run as
subprocesses inside the link's two hosts (network namespaces) or on 127.0.0.1.

    python -m bench.workloads server --stack utcp|kernel|udp --host H
        binds port 0, prints ``{"port": N, "pid": P}``, serves (``bench.common``'s
        protocols) until SIGTERM/SIGINT or stdin EOF.
    python -m bench.workloads client --stack S --host H --port P --tests a,b --params JSON
        runs the tests in order and prints one JSON line per test (``{"error": ...}`` for a
        test that failed), then exits.

Stacks: ``utcp`` (``utcp.open_tcp_stream``/``utcp.serve_tcp``, Nagle off as on every
``trio.SocketStream``), ``kernel`` (``trio.open_tcp_stream``/``trio.serve_listeners``,
both ends pinned to ``--kernel-cc`` when given) and
``udp`` (raw ``trio.socket`` UDP: the floor any UDP stack pays).

Stream tests (``utcp``, ``kernel``); times from ``time.perf_counter``:
  * ``setup``: connect, then one byte echoed; time to ESTABLISHED on the client (the connect
    call returned) and to the first response byte, over ``setup_count`` connections.
  * ``echo64`` / ``echo4k``: ping-pongs of 64 B / 4 KiB on one connection, ``echo_count``
    of them after a short warm-up (or as many as fit in ``echo_seconds``).
  * ``msg100k``: request 100,000 bytes, time until the last arrived; ``msg_count`` times.
  * ``bulk1`` / ``bulk10`` / ``bulk100``: upload 1/10/100 MB, stopping early at
    ``bulk_seconds[size]``; goodput is the bytes the server counted over the time from the
    first write until its count came back. Retransmissions from the sender's statistics.
  * ``parallel``: ``parallel`` connections upload at once for ``parallel_seconds``; each
    one's goodput and Jain's fairness index over them.
  * ``underload_CC``: 64 B ping-pongs on one connection while another uploads for
    ``load_seconds`` (the pings start ``load_warmup`` s in); ``CC`` is the client's
    congestion controller (utcp) or ``kernel`` (the system's default).
UDP tests: ``echo64`` (a ping not answered within ``udp_ping_timeout`` counts as lost) and
``blast`` (1400-byte datagrams as fast as trio sends them for ``blast_seconds``; goodput at
the receiver, and the loss).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import signal
import socket
import statistics
import struct
import sys
import time
from collections.abc import Awaitable, Callable

import trio

import utcp

from .common import (
    CHUNK,
    SIZE,
    UDP_DATA,
    UDP_FINISH,
    UDP_PING,
    UDP_REPORT,
    UDP_START,
    UDP_STARTED,
    Json,
    emit,
    percentile,
    receive_exactly,
    serve_stream,
    serve_udp,
    udp_request,
    watch_parent,
)

STACKS = ("utcp", "kernel", "udp")
SOCKET_BUFFER = 4 << 20  # what utcp's UdpTransport asks for; the raw UDP socket does too
UDP_DATAGRAM = 1400
MB = 10**6
MESSAGE_SIZE = 100_000
BULK_SIZES = {"bulk1": 1 * MB, "bulk10": 10 * MB, "bulk100": 100 * MB}
SERVER_MAX_LIFETIME = 3600.0

# Linux struct tcp_info (include/uapi/linux/tcp.h), the fields the bench reads: name,
# struct format, byte offset.
TCP_INFO_FIELDS = (
    ("snd_mss", "I", 16),
    ("lost", "I", 32),
    ("retrans", "I", 36),
    ("rtt_us", "I", 68),
    ("snd_cwnd", "I", 80),
    ("total_retrans", "I", 100),
    ("bytes_acked", "Q", 120),
    ("segs_out", "I", 136),
    ("data_segs_out", "I", 156),
    ("bytes_sent", "Q", 200),
    ("bytes_retrans", "Q", 208),
    ("dsack_dups", "I", 216),
    ("reord_seen", "I", 220),
)
TCP_INFO_SIZE = 232
TCP_INFO = getattr(socket, "TCP_INFO", 11)
TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)


@dataclasses.dataclass(frozen=True)
class Params:
    """Sizes and time bounds of the client's tests (``--params`` JSON, any subset)."""

    setup_count: int = 10
    echo_count: int = 500
    echo_seconds: float = 6.0
    msg_count: int = 10
    msg_seconds: float = 6.0
    bulk_seconds: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"bulk1": 3.0, "bulk10": 5.0, "bulk100": 8.0}
    )
    parallel: int = 4
    parallel_seconds: float = 4.0
    load_seconds: float = 5.0
    load_warmup: float = 1.0
    blast_seconds: float = 2.0
    udp_ping_timeout: float = 1.0
    base_rtt: float = 0.0  # the scenario's configured round-trip delay, seconds (0: none)


# ================================================================= server


async def server_main(args: argparse.Namespace) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
            if args.stack == "udp":
                sock = trio.socket.socket(family, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
                await sock.bind((args.host, args.port))
                port = sock.getsockname()[1]
                nursery.start_soon(serve_udp, sock)
            elif args.stack == "kernel":
                listeners = await trio.open_tcp_listeners(args.port, host=args.host)
                for listener in listeners:
                    # Accepted connections inherit the listener's congestion control.
                    set_kernel_cc(listener.socket, args.kernel_cc)
                nursery.start_soon(trio.serve_listeners, serve_stream, listeners)
                port = listeners[0].socket.getsockname()[1]
            else:
                serve = functools.partial(
                    utcp.serve_tcp, serve_stream, args.port, host=args.host, config=utcp_config()
                )
                listeners = await nursery.start(serve)
                port = listeners[0].getsockname()[1]
            emit({"port": port, "pid": os.getpid()})

            async def watch_signals() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch_parent, nursery)
            nursery.start_soon(watch_signals)
            await trio.sleep(SERVER_MAX_LIFETIME)
            nursery.cancel_scope.cancel()


def set_kernel_cc(sock: trio.socket.SocketType, cc: str) -> None:
    """Pin a kernel TCP socket's congestion controller (``""``: the system's default)."""
    if cc:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, cc.encode())


def utcp_config(cc: str | None = None) -> utcp.Config:
    """Both ends: Nagle off (as trio sets TCP_NODELAY on kernel streams), the given
    congestion controller (utcp's default otherwise)."""
    config = utcp.Config(nodelay=True)
    return config.replace(congestion_control=cc) if cc else config


# ================================================================= stack statistics


def tcp_info(sock: socket.socket | trio.socket.SocketType) -> Json:
    raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, TCP_INFO_SIZE)
    info: Json = {}
    for name, fmt, offset in TCP_INFO_FIELDS:
        size = struct.calcsize(fmt)
        if offset + size <= len(raw):
            (info[name],) = struct.unpack_from(fmt, raw, offset)
    return info


def stack_stats(stream: trio.abc.Stream) -> Json:
    """The sender-side counters every stream test reports, the same keys for both stacks:
    ``retrans_bytes``, ``retrans_segments``, ``spurious_retrans`` (utcp: retransmissions a
    D-SACK proved unnecessary; kernel: tcpi_dsack_dups, the same evidence), plus the stack's
    own statistics under ``utcp_stats`` or ``tcp_info``."""
    if isinstance(stream, utcp.UtcpStream):
        st = stream.statistics()
        raw = dataclasses.asdict(st)
        # Not in the public Statistics snapshot; the connection's own counter.
        spurious = stream.conn.stats.spurious_retransmits
        raw["spurious_retransmits"] = spurious
        return {
            "retrans_bytes": st.bytes_retransmitted,
            "retrans_segments": st.retransmits,
            "spurious_retrans": spurious,
            "utcp_stats": raw,
        }
    if isinstance(stream, trio.SocketStream):
        info = tcp_info(stream.socket)
        cc = stream.socket.getsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, 16)
        info["congestion_control"] = cc.split(b"\0", 1)[0].decode()
        return {
            "retrans_bytes": info.get("bytes_retrans"),
            "retrans_segments": info.get("total_retrans"),
            "spurious_retrans": info.get("dsack_dups"),
            "tcp_info": info,
        }
    return {}


# ================================================================= stream tests

Connect = Callable[[], Awaitable[trio.abc.HalfCloseableStream]]


def latency_summary(samples_s: list[float], unit: str = "ms") -> Json:
    scale = 1e3 if unit == "ms" else 1e6
    values = sorted(t * scale for t in samples_s)
    if not values:
        return {"n": 0}
    out: Json = {
        "n": len(values),
        f"p50_{unit}": percentile(values, 0.50),
        f"p90_{unit}": percentile(values, 0.90),
        f"p99_{unit}": percentile(values, 0.99),
        # With fewer than 1,000 samples the 99.9th percentile is just the maximum.
        f"p999_{unit}": percentile(values, 0.999) if len(values) >= 1000 else None,
        f"min_{unit}": values[0],
        f"max_{unit}": values[-1],
        f"mean_{unit}": statistics.fmean(values),
    }
    return out


def in_rtts(seconds: float | None, base_rtt: float) -> float | None:
    return None if seconds is None or base_rtt <= 0 else seconds / base_rtt


async def measure_setup(connect: Connect, p: Params) -> Json:
    established: list[float] = []
    first_byte: list[float] = []
    for _ in range(p.setup_count):
        t0 = time.perf_counter()
        stream = await connect()
        t1 = time.perf_counter()
        async with stream:
            await stream.send_all(b"Ex")
            await receive_exactly(stream, 1)
            t2 = time.perf_counter()
            await stream.send_eof()
        established.append(t1 - t0)
        first_byte.append(t2 - t0)
    est, ttfb = statistics.median(established), statistics.median(first_byte)
    return {
        "n": len(established),
        "established_ms": est * 1e3,
        "first_byte_ms": ttfb * 1e3,
        "established_rtts": in_rtts(est, p.base_rtt),
        "first_byte_rtts": in_rtts(ttfb, p.base_rtt),
        "established_samples_ms": [t * 1e3 for t in established],
        "first_byte_samples_ms": [t * 1e3 for t in first_byte],
    }


async def ping_pong(
    stream: trio.abc.HalfCloseableStream, size: int, count: int, deadline: float
) -> list[float]:
    """Up to ``count`` echoes of ``size`` bytes, stopping at ``deadline`` (trio time);
    returns each round trip in seconds, the data checked."""
    rtts: list[float] = []
    for i in range(count):
        if trio.current_time() >= deadline:
            break
        msg = i.to_bytes(8, "big") * (size // 8)
        t0 = time.perf_counter()
        await stream.send_all(msg)
        echoed = await receive_exactly(stream, size)
        t1 = time.perf_counter()
        if echoed != msg:
            raise RuntimeError(f"echo #{i} came back different")
        rtts.append(t1 - t0)
    return rtts


async def measure_echo(connect: Connect, p: Params, size: int) -> Json:
    warmup = min(10, max(2, p.echo_count // 50))
    stream = await connect()
    async with stream:
        await stream.send_all(b"E")
        deadline = trio.current_time() + p.echo_seconds
        rtts = (await ping_pong(stream, size, warmup + p.echo_count, deadline))[warmup:]
        stats = stack_stats(stream)
        await stream.send_eof()
    if not rtts:
        raise TimeoutError(f"no echo completed within {p.echo_seconds} s")
    return {
        "size": size,
        "warmup": warmup,
        "limit_count": p.echo_count,
        **latency_summary(rtts),
        "samples_ms": [round(t * 1e3, 4) for t in rtts] if size == 64 else None,
        **stats,
    }


async def measure_messages(connect: Connect, p: Params) -> Json:
    stream = await connect()
    times: list[float] = []
    async with stream:
        await stream.send_all(b"M")
        deadline = trio.current_time() + p.msg_seconds
        for _ in range(p.msg_count):
            if trio.current_time() >= deadline:
                break
            t0 = time.perf_counter()
            await stream.send_all(SIZE.pack(MESSAGE_SIZE))
            await receive_exactly(stream, MESSAGE_SIZE)
            times.append(time.perf_counter() - t0)
        stats = stack_stats(stream)
        await stream.send_eof()
    if not times:
        raise TimeoutError(f"no message completed within {p.msg_seconds} s")
    return {"size": MESSAGE_SIZE, **latency_summary(times), "server_sends": True, **stats}


async def upload(
    stream: trio.abc.HalfCloseableStream, limit_bytes: int, until: float
) -> tuple[int, float, Json]:
    """Send up to ``limit_bytes`` until trio time ``until``, then EOF; returns what the
    server counted, the seconds from the first write until the count arrived, and the
    sender's statistics."""
    payload = memoryview(bytes(CHUNK))
    t0 = time.perf_counter()
    await stream.send_all(b"B")
    remaining = limit_bytes
    while remaining and trio.current_time() < until:
        n = min(CHUNK, remaining)
        await stream.send_all(payload[:n])
        remaining -= n
    await stream.send_eof()
    (received,) = SIZE.unpack(await receive_exactly(stream, SIZE.size))
    seconds = time.perf_counter() - t0
    stats = stack_stats(stream)
    if received != limit_bytes - remaining:
        raise RuntimeError(f"server counted {received} bytes, sent {limit_bytes - remaining}")
    return received, seconds, stats


def goodput(nbytes: int, seconds: float) -> Json:
    return {
        "bytes": nbytes,
        "seconds": seconds,
        "MB_s": nbytes / seconds / MB if seconds > 0 else None,
        "Mbit_s": nbytes * 8 / seconds / 1e6 if seconds > 0 else None,
    }


async def measure_bulk(connect: Connect, p: Params, name: str) -> Json:
    size = BULK_SIZES[name]
    limit = p.bulk_seconds.get(name, 5.0)
    stream = await connect()
    async with stream:
        received, seconds, stats = await upload(stream, size, trio.current_time() + limit)
    return {
        "target_bytes": size,
        "time_limit_s": limit,
        "complete": received == size,
        **goodput(received, seconds),
        **stats,
    }


def jain(values: list[float]) -> float | None:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 when all are equal, 1/n at worst."""
    squares = sum(v * v for v in values)
    return sum(values) ** 2 / (len(values) * squares) if squares > 0 else None


async def measure_parallel(connect: Connect, p: Params) -> Json:
    streams = [await connect() for _ in range(p.parallel)]
    results: list[tuple[int, float, Json]] = []
    until = trio.current_time() + p.parallel_seconds
    t0 = time.perf_counter()

    async def one(stream: trio.abc.HalfCloseableStream) -> None:
        async with stream:
            results.append(await upload(stream, 1 << 40, until))

    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(one, stream)
    wall = time.perf_counter() - t0
    rates = [r[0] * 8 / r[1] / 1e6 for r in results]
    total = sum(r[0] for r in results)
    return {
        "connections": p.parallel,
        "per_connection_Mbit_s": rates,
        "jain": jain(rates),
        "aggregate_Mbit_s": total * 8 / wall / 1e6,
        "retrans_bytes": sum(r[2].get("retrans_bytes") or 0 for r in results),
        "spurious_retrans": sum(r[2].get("spurious_retrans") or 0 for r in results),
        **goodput(total, wall),
    }


async def measure_underload(connect: Connect, p: Params) -> Json:
    bulk = await connect()
    probe = await connect()
    until = trio.current_time() + p.load_seconds
    load: list[tuple[int, float, Json]] = []
    rtts: list[float] = []

    async def loader() -> None:
        async with bulk:
            load.append(await upload(bulk, 1 << 40, until))

    async def prober() -> None:
        async with probe:
            await probe.send_all(b"E")
            await trio.sleep(p.load_warmup)
            rtts.extend(await ping_pong(probe, 64, 1 << 30, until))
            await probe.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(loader)
        nursery.start_soon(prober)
    if not rtts:
        raise TimeoutError("no ping completed under load")
    received, seconds, stats = load[0]
    return {
        **latency_summary(rtts),
        "samples_ms": [round(t * 1e3, 4) for t in rtts],
        "load_Mbit_s": received * 8 / seconds / 1e6,
        "load_bytes": received,
        **stats,
    }


# ================================================================= UDP tests


async def udp_echo(addr: tuple[str, int], p: Params, family: int) -> Json:
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    rtts: list[float] = []
    lost = 0
    warmup = min(10, max(2, p.echo_count // 50))
    deadline = trio.current_time() + p.echo_seconds
    with sock:
        await sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        for i in range(warmup + p.echo_count):
            if trio.current_time() >= deadline:
                break
            msg = bytes([UDP_PING]) + i.to_bytes(8, "big") * 7 + bytes(64 - 57)
            t0 = time.perf_counter()
            await sock.sendto(msg, addr)
            with trio.move_on_after(p.udp_ping_timeout) as scope:
                while await sock.recv(65536) != msg:
                    pass  # a late answer to an earlier, timed-out ping
            t1 = time.perf_counter()
            if scope.cancelled_caught:
                lost += 1
            elif i >= warmup:
                rtts.append(t1 - t0)
    if not rtts:
        raise TimeoutError("every UDP ping was lost")
    return {
        "size": 64,
        "warmup": warmup,
        "lost": lost,
        **latency_summary(rtts),
        "samples_ms": [round(t * 1e3, 4) for t in rtts],
    }


async def udp_blast(addr: tuple[str, int], p: Params, family: int) -> Json:
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        await sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        await udp_request(sock, addr, bytes([UDP_START]), UDP_STARTED)
        datagram = bytes([UDP_DATA]) + bytes(UDP_DATAGRAM - 1)
        sent = 0
        until = trio.current_time() + p.blast_seconds
        t0 = time.perf_counter()
        while trio.current_time() < until:
            for _ in range(64):
                await sock.sendto(datagram, addr)
            sent += 64
        send_seconds = time.perf_counter() - t0
        await trio.sleep(0.2 + 2 * p.base_rtt)  # let the last datagrams arrive
        reply = await udp_request(sock, addr, bytes([UDP_FINISH]), UDP_REPORT)
    report = json.loads(reply[1:])
    return {
        **goodput(report["bytes"], report["seconds"]),
        "datagram_size": UDP_DATAGRAM,
        "sent_datagrams": sent,
        "received_datagrams": report["datagrams"],
        "loss": 1 - report["datagrams"] / sent if sent else None,
        "send_Mbit_s": sent * (UDP_DATAGRAM - 1) * 8 / send_seconds / 1e6,
    }


# ================================================================= client


def stream_connector(
    stack: str, host: str, port: int, tcp_port: int, cc: str | None = None, kernel_cc: str = ""
) -> Connect:
    """Connections to ``host``:``port``. For utcp, ``tcp_port`` is the server's TCP port
    when it differs from the UDP ``port`` (a UDP proxy relays between them): then each
    connection gets an endpoint of its own (as ``open_tcp_stream`` gives it) and connects
    with ``connect_on(..., remote_port=tcp_port)``; the endpoints live until the client
    process exits."""
    config = utcp_config(cc)

    async def connect() -> trio.abc.HalfCloseableStream:
        if stack == "utcp" and tcp_port != port:
            family_any = "::" if ":" in host else "0.0.0.0"
            endpoint = await utcp.open_endpoint((family_any, 0), config=config)
            return await utcp.connect_on(
                endpoint, (host, port), remote_port=tcp_port, config=config
            )
        if stack == "utcp":
            return await utcp.open_tcp_stream(host, port, config=config)
        stream = await trio.open_tcp_stream(host, port)
        set_kernel_cc(stream.socket, kernel_cc)  # before any data: it applies from here on
        return stream

    return connect


async def run_test(args: argparse.Namespace, p: Params, test: str) -> Json:
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    addr = (args.host, args.port)
    if args.stack == "udp":
        if test == "echo64":
            return await udp_echo(addr, p, family)
        if test == "blast":
            return await udp_blast(addr, p, family)
        raise ValueError(f"no UDP test {test!r}")
    tcp_port = args.tcp_port or args.port
    connect = stream_connector(args.stack, args.host, args.port, tcp_port, None, args.kernel_cc)
    if test == "setup":
        return await measure_setup(connect, p)
    if test in ("echo64", "echo4k"):
        return await measure_echo(connect, p, 64 if test == "echo64" else 4096)
    if test == "msg100k":
        return await measure_messages(connect, p)
    if test in BULK_SIZES:
        return await measure_bulk(connect, p, test)
    if test == "parallel":
        return await measure_parallel(connect, p)
    if test.startswith("underload_"):
        cc = test.removeprefix("underload_")
        if args.stack == "utcp":
            connect = stream_connector(args.stack, args.host, args.port, tcp_port, cc)
        elif cc != "kernel":
            raise ValueError("kernel TCP runs underload_kernel (the system's controller)")
        return {"cc": cc, **(await measure_underload(connect, p))}
    raise ValueError(f"unknown test {test!r}")


def time_bound(test: str, p: Params) -> float:
    """A generous bound on one test, past which it is reported as an error."""
    rtt = max(p.base_rtt, 0.001)
    work = {
        "setup": p.setup_count * 4 * rtt,
        "echo64": p.echo_seconds,
        "echo4k": p.echo_seconds,
        "msg100k": p.msg_seconds,
        "parallel": p.parallel_seconds,
        "blast": p.blast_seconds,
    }.get(test, p.load_seconds if test.startswith("underload_") else 0.0)
    if test in BULK_SIZES:
        work = p.bulk_seconds.get(test, 5.0)
    return work * 3 + 30.0


async def client_main(args: argparse.Namespace) -> int:
    p = parse_params(args.params)
    failures = 0
    for test in args.tests.split(","):
        t0 = time.perf_counter()
        try:
            with trio.fail_after(time_bound(test, p)):
                record = await run_test(args, p, test)
        except trio.TooSlowError:
            record = {"error": f"timed out after {time_bound(test, p):.0f} s"}
        except Exception as exc:
            record = {"error": repr(exc)}
        failures += "error" in record
        emit({"test": test, "stack": args.stack, **record, "wall_s": time.perf_counter() - t0})
    return 1 if failures else 0


def parse_params(text: str) -> Params:
    raw = json.loads(text) if text else {}
    fields = {f.name for f in dataclasses.fields(Params)}
    unknown = set(raw) - fields
    if unknown:
        raise ValueError(f"unknown params: {sorted(unknown)}")
    return Params(**raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=("server", "client"))
    parser.add_argument("--stack", choices=STACKS, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tcp-port", type=int, default=0, help="the server's, if not --port")
    parser.add_argument("--kernel-cc", default="", help="kernel TCP's congestion control")
    parser.add_argument("--tests", default="")
    parser.add_argument("--params", default="")
    args = parser.parse_args(argv)
    if args.role == "server":
        trio.run(server_main, args)
        return 0
    return trio.run(client_main, args)


if __name__ == "__main__":
    sys.exit(main())
