"""A utcp echo client: send a message N times, read each echo back, time the round trips.

Like ``utcp echo HOST PORT``; the older ``--host``/``--port`` flags still work. On one
machine, start a server first (``.venv/bin/python examples/echo_server.py --listen
127.0.0.1:4747``), then:

    .venv/bin/python examples/echo_client.py 127.0.0.1 4747 --message hello --count 5

On two machines, run the server with ``--listen 0.0.0.0:4747`` on one (UDP 4747 open in its
firewall) and ``.venv/bin/python examples/echo_client.py SERVER 4747`` on the other; IPv6
works the same (``--listen [::]:4747``, ``echo_client.py 2001:db8::1 4747``).

Exits 0 when every echo came back intact, 1 if the server refused the connection, did not
answer within ``--timeout`` seconds, broke the connection or echoed something else.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from echo_server import add_config_arguments, config_from_args

import utcp


class EchoError(Exception):
    """The echo came back wrong, or the connection ended before it came back."""


@dataclass
class EchoResult:
    """What one client run measured (times in seconds)."""

    address: tuple[str, int]
    connect_time: float
    round_trips: list[float] = field(default_factory=list)


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    """Read exactly ``size`` bytes (an echo may arrive in several pieces)."""
    buf = bytearray()
    while len(buf) < size:
        chunk = await stream.receive_some(size - len(buf))
        if not chunk:
            raise EchoError(f"connection closed after {len(buf)} of {size} echoed bytes")
        buf += chunk
    return bytes(buf)


async def echo_client(
    host: str,
    port: int,
    message: bytes,
    *,
    count: int = 1,
    timeout: float = 5.0,
    config: utcp.Config | None = None,
    on_round_trip: Callable[[int, float], None] | None = None,
) -> EchoResult:
    """Connect to ``host:port`` over utcp and echo ``message`` ``count`` times.

    The connect and each round trip must each finish within ``timeout`` seconds, else
    ``TimeoutError``. ``ConnectionRefusedError`` propagates as is; a broken connection or a
    wrong echo raises ``EchoError``. ``on_round_trip(i, seconds)``, if given, is called after
    each round trip.
    """
    config = (config or utcp.Config()).replace(connect_timeout=timeout)
    start = trio.current_time()
    with trio.move_on_after(timeout) as scope:
        stream = await utcp.open_tcp_stream(host, port, config=config)
    if scope.cancelled_caught:
        raise TimeoutError(f"no answer from {host}:{port} within {timeout} s")
    result = EchoResult(address=stream.getpeername(), connect_time=trio.current_time() - start)
    try:
        async with stream:
            for i in range(count):
                t0 = trio.current_time()
                with trio.move_on_after(timeout) as scope:
                    await stream.send_all(message)
                    echoed = await receive_exactly(stream, len(message))
                if scope.cancelled_caught:
                    raise TimeoutError(f"echo #{i + 1} not back within {timeout} s")
                rtt = trio.current_time() - t0
                if echoed != message:
                    raise EchoError(f"echo #{i + 1} differs: sent {message!r}, got {echoed!r}")
                result.round_trips.append(rtt)
                if on_round_trip is not None:
                    on_round_trip(i, rtt)
            await stream.send_eof()
            # The server closes its side once it has echoed everything: wait for that EOF.
            with trio.move_on_after(timeout):
                while await stream.receive_some():
                    pass
    except trio.BrokenResourceError as exc:
        raise EchoError(f"connection broken: {exc.__cause__ or exc}") from exc
    return result


def summary(result: EchoResult) -> str:
    """One line: connect time and min/median/max round-trip time, in milliseconds."""
    rtts = [t * 1000 for t in result.round_trips]
    return (
        f"{len(rtts)} round trips to {result.address[0]}:{result.address[1]}: "
        f"connect {result.connect_time * 1000:.2f} ms, rtt min {min(rtts):.3f} / "
        f"median {statistics.median(rtts):.3f} / max {max(rtts):.3f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host_arg", nargs="?", metavar="HOST", help="server address")
    parser.add_argument("port_arg", nargs="?", type=int, metavar="PORT", help="server port")
    parser.add_argument("--host", default="127.0.0.1", help="server address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=4747, help="server port (default: %(default)s)")
    parser.add_argument("--message", default="hello, utcp", help="text to echo")
    parser.add_argument("--count", type=int, default=5, help="round trips (default: %(default)s)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds allowed for the connect and for each round trip (default: %(default)s)",
    )
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    if args.host_arg is not None:
        args.host = args.host_arg.strip("[]")
    if args.port_arg is not None:
        args.port = args.port_arg
    if args.count < 1:
        parser.error("--count must be at least 1")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if not args.message:
        parser.error("--message must not be empty")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))

    def report(i: int, rtt: float) -> None:
        print(f"echo #{i + 1}: {len(message)} bytes, round trip {rtt * 1000:.3f} ms", flush=True)

    message = args.message.encode()
    try:
        result = trio.run(
            functools.partial(
                echo_client,
                args.host,
                args.port,
                message,
                count=args.count,
                timeout=args.timeout,
                config=config,
                on_round_trip=report,
            )
        )
    except ConnectionRefusedError:
        print(
            f"echo_client: connection refused by {args.host}:{args.port} "
            "(is a utcp echo server listening on that port?)",
            file=sys.stderr,
        )
        return 1
    except TimeoutError as exc:
        print(
            f"echo_client: timed out: {exc} (nothing answering on {args.host}:{args.port}? "
            "utcp runs over UDP, so a closed port usually looks like silence)",
            file=sys.stderr,
        )
        return 1
    except EchoError as exc:
        print(f"echo_client: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"echo_client: cannot connect to {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
