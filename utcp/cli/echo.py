"""``utcp echo-server`` and ``utcp echo``: is the server reachable, and how fast is a round
trip? The client sends ``--count`` messages of ``--size`` random bytes, checks each echo,
prints one line per round trip, then p50/p99 and the connection's statistics. With
``--fastopen`` on both (TCP Fast Open, RFC 7413) a first connection fetches a cookie, and the
timed one carries its first message in the SYN: the client shows the round trip saved."""

from __future__ import annotations

import argparse
import itertools
import math
import os
from typing import Any

import trio

import utcp

from . import common
from .common import CliError, HostPort, Session, format_address

DEFAULT_PORT = 4747
RECEIVE_SIZE = 65536
# The server's Fast Open queue (Linux's TCP_FASTOPEN value): connections that took data
# from their SYN and wait in SYN-RECEIVED (RFC 7413 5.1).
FASTOPEN_QUEUE = 64


def register(subparsers: Any) -> None:
    server = subparsers.add_parser(
        "echo-server",
        help="echo every byte back to its sender",
        description="Listen for utcp connections and echo every byte back until the client "
        "closes. Runs until Ctrl-C.",
    )
    server.add_argument(
        "--listen",
        default=str(DEFAULT_PORT),
        metavar="[ADDR:]PORT",
        help="where to listen (default: all addresses, port %(default)s)",
    )
    server.add_argument(
        "--fastopen",
        action="store_true",
        help="take data from SYNs with a valid TCP Fast Open cookie (RFC 7413)",
    )
    common.add_common_flags(server, client=False)
    server.set_defaults(func=run_server)

    client = subparsers.add_parser(
        "echo",
        help="time round trips to an echo-server",
        description="Send messages to a utcp echo-server, check each echo and time it.",
    )
    client.add_argument("host", metavar="HOST", help="server name or address")
    client.add_argument("port", metavar="PORT", help="server port")
    client.add_argument("--count", type=int, default=5, help="round trips (default: %(default)s)")
    client.add_argument("--size", type=int, default=64, help="bytes per message (default: 64)")
    client.add_argument(
        "--interval",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="pause between round trips (default: none)",
    )
    client.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="allowed for each round trip (default: %(default)s)",
    )
    client.add_argument(
        "--fastopen",
        action="store_true",
        help="TCP Fast Open (RFC 7413): fetch a cookie on a first connection, send the first "
        "message in the SYN of the timed one, and show the round trip saved",
    )
    common.add_common_flags(client, client=True)
    client.set_defaults(func=run_client)


# ------------------------------------------------------------------ server


async def echo_stream(stream: utcp.UtcpStream) -> int:
    """Echo until the peer half-closes, then half-close too; the byte count."""
    total = 0
    while True:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            break
        await stream.send_all(data)
        total += len(data)
    await stream.send_eof()
    return total


def run_server(args: argparse.Namespace) -> int:
    prog = "utcp echo-server"

    async def main() -> int:
        where = common.parse_hostport(args.listen, host_optional=True, allow_zero=True)
        changes = {"fastopen_queue": FASTOPEN_QUEUE} if args.fastopen else {}
        async with common.session(args, prog, **changes) as sess:
            await serve(sess, where)
        return common.EXIT_OK

    return common.run(args, prog, main)


async def serve(sess: Session, where: HostPort) -> None:
    listeners = await sess.listen(where)
    counter = itertools.count(1)

    async def handler(stream: utcp.UtcpStream) -> None:
        peer = format_address(stream.getpeername())
        name = f"connection #{next(counter)} from {peer}"
        sess.info(f"{name} opened")
        with sess.tracking(stream, name):
            try:
                async with stream:
                    total = await echo_stream(stream)
                sess.info(f"{name} closed: echoed {total} bytes")
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                sess.info(f"{name} broken: {exc.__cause__ or exc}")

    await trio.serve_listeners(handler, listeners)


# ------------------------------------------------------------------ client


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


async def receive_exactly(stream: utcp.UtcpStream, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = await stream.receive_some(size - len(buf))
        if not chunk:
            raise CliError(
                common.EXIT_RESET, f"the server closed after {len(buf)} of {size} echoed bytes"
            )
        buf += chunk
    return bytes(buf)


def run_client(args: argparse.Namespace) -> int:
    prog = "utcp echo"

    async def main() -> int:
        host = common.parse_host(args.host)
        port = common.parse_port(args.port)
        if args.count < 1 or args.size < 1 or args.interval < 0 or args.timeout <= 0:
            raise CliError(
                common.EXIT_USAGE,
                "--count and --size must be >= 1, --interval >= 0, --timeout > 0",
            )
        changes = {"fastopen_connect": True} if args.fastopen else {}
        async with common.session(args, prog, **changes) as sess:
            cold = await cookie_round_trip(sess, host, port, args) if args.fastopen else None
            start = trio.current_time()
            stream = await sess.connect(host, port)
            connect_time = trio.current_time() - start
            where = format_address(stream.getpeername())
            sess.info(f"connected to {where} in {connect_time * 1000:.2f} ms")
            with sess.tracking(stream, f"connection to {where}"):
                rtts = await round_trips(stream, args)
                if cold is not None:
                    print(fastopen_line(cold, connect_time + rtts[0], stream), flush=True)
                await stream.send_eof()
                with trio.move_on_after(args.timeout):
                    while await stream.receive_some():
                        pass
                print(summary(rtts, where), flush=True)
                print(common.format_statistics("connection", stream.statistics()), flush=True)
                await common.linger(stream)
        return common.EXIT_OK

    return common.run(args, prog, main)


async def cookie_round_trip(sess: Session, host: str, port: int, args: argparse.Namespace) -> float:
    """A first Fast Open connection (its SYN asks for the cookie): the time from connect to
    its first echo, after which it is closed."""
    start = trio.current_time()
    stream = await sess.connect(host, port)
    with trio.move_on_after(args.timeout) as scope:
        message = os.urandom(args.size)
        await stream.send_all(message)
        echoed = await receive_exactly(stream, len(message))
    if scope.cancelled_caught:
        raise CliError(common.EXIT_TIMED_OUT, f"echo not back within {args.timeout} s")
    if echoed != message:
        raise CliError(common.EXIT_FAILURE, "the echo came back different")
    elapsed = trio.current_time() - start
    await stream.aclose()
    return elapsed


def fastopen_line(cold: float, warm: float, stream: utcp.UtcpStream) -> str:
    """Connect to first echo without and with the cookie, and what Fast Open did."""
    fo = stream.statistics().fastopen
    if fo.get("syn_data_acked"):
        how = "first message in the SYN"
    elif fo.get("fallbacks"):
        how = "fell back to a plain handshake"
    else:
        how = "no cookie from the server (is it run with --fastopen?)"
    return (
        f"fast open: connect to first echo {cold * 1000:.3f} ms without a cookie, "
        f"{warm * 1000:.3f} ms with it ({how}): {(cold - warm) * 1000:.3f} ms saved"
    )


async def round_trips(stream: utcp.UtcpStream, args: argparse.Namespace) -> list[float]:
    rtts: list[float] = []
    for seq in range(1, args.count + 1):
        message = os.urandom(args.size)
        t0 = trio.current_time()
        with trio.move_on_after(args.timeout) as scope:
            await stream.send_all(message)
            echoed = await receive_exactly(stream, len(message))
        if scope.cancelled_caught:
            raise CliError(common.EXIT_TIMED_OUT, f"echo #{seq} not back within {args.timeout} s")
        rtt = trio.current_time() - t0
        if echoed != message:
            raise CliError(common.EXIT_FAILURE, f"echo #{seq} came back different")
        rtts.append(rtt)
        print(f"{args.size} bytes: seq={seq} time={rtt * 1000:.3f} ms", flush=True)
        if args.interval and seq < args.count:
            await trio.sleep(args.interval)
    return rtts


def summary(rtts: list[float], where: str) -> str:
    ms = [t * 1000 for t in rtts]
    return (
        f"--- {where}: {len(ms)} round trips, all echoed intact ---\n"
        f"rtt min {min(ms):.3f} / p50 {percentile(ms, 0.50):.3f} / "
        f"p99 {percentile(ms, 0.99):.3f} / max {max(ms):.3f} ms"
    )
