"""``utcp speedtest``: iperf3-like throughput measurement over utcp.

``speedtest server`` waits for tests; ``speedtest client HOST`` runs one: a control
connection agrees on the test (duration, direction, parallel streams), then ``-P`` data
connections carry zeros for ``-t`` seconds, client to server (or server to client with
``-R``). The client prints a line per interval (transfer, bitrate, retransmits, cwnd and RTT of
the sending side when that is us), then the sender's and the receiver's summaries, the remote
one sent back over the control connection; ``--json`` prints one JSON document instead.

Control messages are single JSON lines (utf-8, newline-terminated):
  client -> server   {"speedtest": 1, "cookie": HEX, "duration": S, "parallel": P, "reverse": B}
  server -> client   {"ok": true}
  each data stream   {"cookie": HEX, "stream": I}  (client -> server, first line)
  client -> server   {"results": [...]}  once every data stream has ended
  server -> client   {"results": [...]}
"""

from __future__ import annotations

import argparse
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import trio

import utcp

from . import common
from .common import CliError, Session, format_address

DEFAULT_PORT = 5201
CHUNK = 128 * 1024
ZEROS = bytes(CHUNK)
MAX_LINE = 1 << 20
MAX_PARALLEL = 128
CONTROL_TIMEOUT = 10.0
SETUP_TIMEOUT = 30.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "speedtest",
        help="measure throughput (iperf3-like server and client)",
        description="Measure utcp throughput between a speedtest server and client.",
    )
    roles = parser.add_subparsers(dest="role", metavar="ROLE", required=True)
    server = roles.add_parser("server", help="wait for speedtest clients")
    server.add_argument(
        "--listen",
        default=str(DEFAULT_PORT),
        metavar="[ADDR:]PORT",
        help="where to listen (default: all addresses, port %(default)s)",
    )
    common.add_common_flags(server, client=False)
    server.set_defaults(func=run_server)

    client = roles.add_parser("client", help="run a test against a speedtest server")
    client.add_argument("host", metavar="HOST", help="server name or address")
    client.add_argument(
        "port", metavar="PORT", nargs="?", default=str(DEFAULT_PORT), help="default 5201"
    )
    client.add_argument(
        "-t", "--time", type=float, default=10.0, metavar="SECONDS", help="duration (default 10)"
    )
    client.add_argument(
        "-P", "--parallel", type=int, default=1, metavar="N", help="parallel connections"
    )
    client.add_argument(
        "-R", "--reverse", action="store_true", help="the server sends, the client receives"
    )
    client.add_argument(
        "-i",
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between interval lines (default 1)",
    )
    client.add_argument("--json", action="store_true", help="print one JSON document")
    common.add_common_flags(client, client=True)
    client.set_defaults(func=run_client)


# ------------------------------------------------------------------ shared pieces


async def read_line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> dict[str, Any]:
    """One JSON object from a newline-terminated line (bytes after it stay in ``buffer``)."""
    while b"\n" not in buffer:
        if len(buffer) > MAX_LINE:
            raise CliError(common.EXIT_FAILURE, "speedtest peer sent an overlong line")
        data = await stream.receive_some()
        if not data:
            raise CliError(common.EXIT_RESET, "speedtest peer closed the control connection")
        buffer += data
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    try:
        message = json.loads(line)
    except ValueError:
        raise CliError(common.EXIT_FAILURE, "speedtest peer sent malformed JSON") from None
    if not isinstance(message, dict):
        raise CliError(common.EXIT_FAILURE, "speedtest peer sent a non-object message")
    return message


async def send_line(stream: trio.abc.SendStream, message: dict[str, Any]) -> None:
    await stream.send_all(json.dumps(message).encode() + b"\n")


@dataclass
class Flow:
    """One data connection's side of a test, as we saw it."""

    stream: utcp.UtcpStream
    sender: bool
    bytes: int = 0  # written by us (sender) or read by us (receiver)
    start: float = 0.0
    end: float | None = None

    def result(self) -> dict[str, Any]:
        stats = self.stream.statistics()
        seconds = max((self.end or trio.current_time()) - self.start, 1e-9)
        return {
            "bytes": self.bytes,
            "seconds": seconds,
            "bits_per_second": self.bytes * 8 / seconds,
            "retransmits": stats.retransmits,
            "bytes_retransmitted": stats.bytes_retransmitted,
            "cwnd": stats.cwnd,
            "rtt": stats.srtt,
            "min_rtt": stats.min_rtt,
            "sender": self.sender,
        }


async def send_for(flow: Flow, duration: float) -> None:
    """Send zeros for ``duration`` seconds, half-close, and wait for the receiver's FIN
    (it closes once it has read everything: all our bytes arrived)."""
    flow.start = trio.current_time()
    deadline = flow.start + duration
    while trio.current_time() < deadline:
        await flow.stream.send_all(ZEROS)
        flow.bytes += CHUNK
    await flow.stream.send_eof()
    while await flow.stream.receive_some():
        pass
    flow.end = trio.current_time()


async def receive_all(flow: Flow, pending: bytes = b"") -> None:
    """Read to end of file, then half-close (the sender waits for that)."""
    flow.start = trio.current_time()
    flow.bytes = len(pending)
    while True:
        data = await flow.stream.receive_some(CHUNK)
        if not data:
            break
        flow.bytes += len(data)
    flow.end = trio.current_time()
    await flow.stream.send_eof()


# ------------------------------------------------------------------ server


@dataclass
class Test:
    duration: float
    parallel: int
    reverse: bool
    flows: dict[int, Flow] = field(default_factory=dict)
    done: int = 0
    all_done: trio.Event = field(default_factory=trio.Event)


def run_server(args: argparse.Namespace) -> int:
    prog = "utcp speedtest server"

    async def main() -> int:
        where = common.parse_hostport(args.listen, host_optional=True, allow_zero=True)
        async with common.session(args, prog) as sess:
            await serve(sess, where)
        return common.EXIT_OK

    return common.run(args, prog, main)


async def serve(sess: Session, where: common.HostPort) -> None:
    listeners = await sess.listen(where)
    tests: dict[str, Test] = {}

    async def handler(stream: utcp.UtcpStream) -> None:
        peer = format_address(stream.getpeername())
        try:
            async with stream:
                buffer = bytearray()
                with trio.fail_after(CONTROL_TIMEOUT):
                    hello = await read_line(stream, buffer)
                if "speedtest" in hello:
                    await control(sess, stream, buffer, hello, tests, peer)
                else:
                    await data(sess, stream, buffer, hello, tests)
        except (CliError, OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            sess.info(f"test from {peer} failed: {common.classify(exc)[1]}")

    await trio.serve_listeners(handler, listeners)


async def control(
    sess: Session,
    stream: utcp.UtcpStream,
    buffer: bytearray,
    hello: dict[str, Any],
    tests: dict[str, Test],
    peer: str,
) -> None:
    try:
        cookie = str(hello["cookie"])
        test = Test(float(hello["duration"]), int(hello["parallel"]), bool(hello["reverse"]))
    except (KeyError, TypeError, ValueError):
        raise CliError(common.EXIT_FAILURE, "bad test request") from None
    if not (0 < test.duration <= 3600 and 1 <= test.parallel <= MAX_PARALLEL):
        raise CliError(common.EXIT_FAILURE, "test request out of range")
    tests[cookie] = test
    try:
        await send_line(stream, {"ok": True})
        with trio.fail_after(test.duration + SETUP_TIMEOUT):
            results = await read_line(stream, buffer)
            await test.all_done.wait()
        ours = [test.flows[i].result() for i in sorted(test.flows)]
        await send_line(stream, {"results": ours})
        await stream.send_eof()
    finally:
        del tests[cookie]
    theirs = results.get("results", [])
    received = sum(r["bytes"] for r in (theirs if test.reverse else ours))
    seconds = max((r["seconds"] for r in ours), default=0.0) or 1e-9
    direction = "reverse (we sent)" if test.reverse else "forward (we received)"
    if not sess.quiet:
        print(
            f"test from {peer}: {direction}, {test.parallel} stream(s), {received} bytes "
            f"in {seconds:.2f} s = {received * 8 / seconds / 1e6:.2f} Mbit/s",
            flush=True,
        )


async def data(
    sess: Session,
    stream: utcp.UtcpStream,
    buffer: bytearray,
    hello: dict[str, Any],
    tests: dict[str, Test],
) -> None:
    test = tests.get(str(hello.get("cookie")))
    index = hello.get("stream")
    if test is None or not isinstance(index, int) or index in test.flows:
        raise CliError(common.EXIT_FAILURE, "data connection for no known test")
    flow = Flow(stream, sender=test.reverse)
    test.flows[index] = flow
    with sess.tracking(stream, f"test stream {index}"):
        if test.reverse:
            await send_for(flow, test.duration)
        else:
            await receive_all(flow, bytes(buffer))
    test.done += 1
    if test.done == test.parallel:
        test.all_done.set()


# ------------------------------------------------------------------ client


def mbytes(n: float) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GBytes"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f} MBytes"
    return f"{n / (1 << 10):.2f} KBytes"


def bitrate(bits_per_second: float) -> str:
    if bits_per_second >= 1e9:
        return f"{bits_per_second / 1e9:.2f} Gbits/sec"
    if bits_per_second >= 1e6:
        return f"{bits_per_second / 1e6:.2f} Mbits/sec"
    return f"{bits_per_second / 1e3:.2f} Kbits/sec"


def run_client(args: argparse.Namespace) -> int:
    prog = "utcp speedtest client"

    async def main() -> int:
        host = common.parse_host(args.host)
        port = common.parse_port(args.port)
        if not (args.time > 0 and 1 <= args.parallel <= MAX_PARALLEL and args.interval > 0):
            raise CliError(common.EXIT_USAGE, f"need -t > 0, 1 <= -P <= {MAX_PARALLEL} and -i > 0")
        async with common.session(args, prog) as sess:
            report = await run_test(sess, host, port, args)
        if args.json:
            print(json.dumps(report, indent=2), flush=True)
        return common.EXIT_OK

    return common.run(args, prog, main)


async def run_test(sess: Session, host: str, port: int, args: argparse.Namespace) -> dict[str, Any]:
    text = not args.json
    cookie = secrets.token_hex(16)
    control = await sess.connect(host, port)
    buffer = bytearray()
    local, remote = format_address(control.getsockname()), format_address(control.getpeername())
    if text:
        print(f"Connecting to host {host}, port {port} (utcp)", flush=True)
    await send_line(
        control,
        {
            "speedtest": 1,
            "cookie": cookie,
            "duration": args.time,
            "parallel": args.parallel,
            "reverse": args.reverse,
        },
    )
    with trio.fail_after(CONTROL_TIMEOUT):
        answer = await read_line(control, buffer)
    if answer.get("ok") is not True:
        raise CliError(common.EXIT_FAILURE, f"the server declined the test: {answer}")
    flows: list[Flow] = []
    for index in range(args.parallel):
        stream = await sess.connect(host, port)
        await send_line(stream, {"cookie": cookie, "stream": index})
        flows.append(Flow(stream, sender=not args.reverse))
        if text:
            print(
                f"[{index + 1:3d}] local {format_address(stream.getsockname())} connected to "
                f"{format_address(stream.getpeername())}",
                flush=True,
            )
    intervals: list[dict[str, Any]] = []
    if text:
        print("[ ID] Interval           Transfer      Bitrate           Retr  Cwnd         RTT")
    async with trio.open_nursery() as nursery:
        reporter = trio.CancelScope()

        async def report() -> None:
            with reporter:
                await report_intervals(flows, args, intervals)

        nursery.start_soon(report)
        with trio.fail_after(args.time + SETUP_TIMEOUT):
            async with trio.open_nursery() as transfers:
                for index, flow in enumerate(flows):
                    transfers.start_soon(transfer, sess, index, flow, args)
        reporter.cancel()
    ours = [flow.result() for flow in flows]
    await send_line(control, {"results": ours})
    with trio.fail_after(CONTROL_TIMEOUT):
        theirs = (await read_line(control, buffer)).get("results", [])
    await common.linger(control)
    for flow in flows:
        await flow.stream.aclose()
    end = summarize(ours, theirs, args, text)
    return {
        "start": {
            "connected": [{"local": local, "remote": remote}],
            "test": {
                "protocol": "utcp",
                "duration": args.time,
                "parallel": args.parallel,
                "reverse": args.reverse,
                "congestion": flows[0].stream.statistics().congestion_control,
                "mss": flows[0].stream.statistics().mss,
            },
        },
        "intervals": intervals,
        "end": end,
    }


async def transfer(sess: Session, index: int, flow: Flow, args: argparse.Namespace) -> None:
    with sess.tracking(flow.stream, f"test stream {index}"):
        if flow.sender:
            await send_for(flow, args.time)
        else:
            await receive_all(flow)


async def report_intervals(
    flows: list[Flow], args: argparse.Namespace, intervals: list[dict[str, Any]]
) -> None:
    start = trio.current_time()
    last = [(0, s.stream.statistics().retransmits) for s in flows]
    for n in range(1, 1 << 30):
        await trio.sleep_until(start + n * args.interval)
        t0, t1 = (n - 1) * args.interval, n * args.interval
        rows: list[dict[str, Any]] = []
        for i, flow in enumerate(flows):
            stats = flow.stream.statistics()
            done = stats.bytes_acked if flow.sender else flow.bytes
            moved, retrans = done - last[i][0], stats.retransmits - last[i][1]
            last[i] = (done, stats.retransmits)
            rows.append(
                {
                    "id": i + 1,
                    "start": t0,
                    "end": t1,
                    "bytes": moved,
                    "bits_per_second": moved * 8 / args.interval,
                    "retransmits": retrans if flow.sender else None,
                    "cwnd": stats.cwnd if flow.sender else None,
                    "rtt": stats.srtt,
                }
            )
        total = sum(r["bytes"] for r in rows)
        retrans_sum = sum(r["retransmits"] or 0 for r in rows)
        summed = {
            "start": t0,
            "end": t1,
            "bytes": total,
            "bits_per_second": total * 8 / args.interval,
            "retransmits": retrans_sum if flows[0].sender else None,
        }
        intervals.append({"streams": rows, "sum": summed})
        if args.json:
            continue
        for row in rows:
            print(interval_line(f"{row['id']:3d}", row), flush=True)
        if len(rows) > 1:
            print(interval_line("SUM", summed), flush=True)


def interval_line(label: str, row: dict[str, Any]) -> str:
    retr = "-" if row.get("retransmits") is None else str(row["retransmits"])
    cwnd = "-" if row.get("cwnd") is None else mbytes(row["cwnd"])
    rtt = "-" if row.get("rtt") is None else f"{row['rtt'] * 1000:.2f} ms"
    return (
        f"[{label}] {row['start']:6.2f}-{row['end']:<6.2f} sec  {mbytes(row['bytes']):>12}  "
        f"{bitrate(row['bits_per_second']):>16}  {retr:>4}  {cwnd:>12}  {rtt}"
    )


def summarize(
    ours: list[dict[str, Any]], theirs: list[dict[str, Any]], args: argparse.Namespace, text: bool
) -> dict[str, Any]:
    sender, receiver = (theirs, ours) if args.reverse else (ours, theirs)

    def total(side: list[dict[str, Any]]) -> dict[str, Any]:
        nbytes = sum(r["bytes"] for r in side)
        seconds = max((r["seconds"] for r in side), default=0.0) or 1e-9
        return {
            "bytes": nbytes,
            "seconds": seconds,
            "bits_per_second": nbytes * 8 / seconds,
            "retransmits": sum(r["retransmits"] for r in side),
        }

    streams: list[dict[str, Any]] = [
        {"id": i + 1, "sender": s, "receiver": r}
        for i, (s, r) in enumerate(zip(sender, receiver, strict=False))
    ]
    end: dict[str, Any] = {
        "streams": streams,
        "sum_sent": total(sender),
        "sum_received": total(receiver),
    }
    if text:
        print("- " * 40)
        rows: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
            (f"{s['id']:3d}", s["sender"], s["receiver"]) for s in streams
        ]
        if len(streams) > 1:
            rows.append(("SUM", end["sum_sent"], end["sum_received"]))
        for label, snd, rcv in rows:
            for side, role in ((snd, "sender"), (rcv, "receiver")):
                print(
                    f"[{label}]   0.00-{side['seconds']:<6.2f} sec  {mbytes(side['bytes']):>12}  "
                    f"{bitrate(side['bits_per_second']):>16}  "
                    f"{side['retransmits'] if role == 'sender' else '':>4}  {role}",
                    flush=True,
                )
    return end
