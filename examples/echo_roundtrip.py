"""One utcp echo round trip over real UDP sockets on this machine, then exit.

Starts the echo server of ``echo_server.py`` on 127.0.0.1 (an ephemeral port) and the client
of ``echo_client.py`` in the same trio run, echoes one message, prints what it measured and
shuts both down. Everything is bounded by ``--timeout``; no process is left behind.

    python examples/echo_roundtrip.py
    python examples/echo_roundtrip.py --message "hello, utcp" --count 10
"""

from __future__ import annotations

import argparse
import statistics
import sys

import trio
from echo_client import EchoError, EchoResult, echo_client
from echo_server import serve

import utcp


async def roundtrip(host: str, message: bytes, count: int, timeout: float) -> EchoResult:
    """Serve on ``host`` (any free port), echo ``message`` ``count`` times, stop serving."""
    config = utcp.Config()
    result: EchoResult | None = None
    error: Exception | None = None
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve, host, 0, config)
            port = listeners[0].getsockname()[1]
            try:
                result = await echo_client(
                    host, port, message, count=count, timeout=timeout, config=config
                )
            except (EchoError, OSError) as exc:
                error = exc  # raised below, outside the nursery, so not in an ExceptionGroup
            nursery.cancel_scope.cancel()  # stops the server
    if error is not None:
        raise error
    assert result is not None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to use (default: %(default)s)")
    parser.add_argument("--message", default="hello", help="text to echo (default: %(default)s)")
    parser.add_argument("--count", type=int, default=1, help="round trips (default: %(default)s)")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="give up after this many seconds"
    )
    args = parser.parse_args(argv)
    if args.count < 1 or args.timeout <= 0 or not args.message:
        parser.error("--count must be >= 1, --timeout positive and --message non-empty")
    message = args.message.encode()
    try:
        result = trio.run(roundtrip, args.host, message, args.count, args.timeout)
    except (trio.TooSlowError, TimeoutError):
        print(f"echo_roundtrip: no echo within {args.timeout} s", file=sys.stderr)
        return 1
    except (EchoError, OSError) as exc:
        print(f"echo_roundtrip: failed: {exc!r}", file=sys.stderr)
        return 1
    ip, port = result.address
    rtt_ms = statistics.median(result.round_trips) * 1000
    what = "round trip" if args.count == 1 else f"median of {args.count} round trips"
    print(
        f"utcp echo over {ip}:{port}: {args.message!r} {what} {rtt_ms:.2f} ms "
        f"(connect {result.connect_time * 1000:.1f} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
