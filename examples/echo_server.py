"""A utcp echo server: every byte a client sends comes straight back, until it closes.

utcp carries TCP over UDP, so the server listens on a UDP port; a client reaches it with
``utcp.open_tcp_stream(host, port)`` (see ``echo_client.py``). Runs until Ctrl-C. The flags
match ``utcp echo-server`` (``--listen [ADDR:]PORT``); ``--host``/``--port`` still work.

On one machine (two terminals):

    .venv/bin/python examples/echo_server.py --listen 127.0.0.1:4747
    .venv/bin/python examples/echo_client.py 127.0.0.1 4747

On two machines: on the server (UDP port 4747 open in its firewall)

    .venv/bin/python examples/echo_server.py --listen 0.0.0.0:4747     # or [::]:4747

and on the client ``.venv/bin/python examples/echo_client.py SERVER 4747 --count 10``.
``--listen 127.0.0.1:0`` picks any free port and logs it.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import signal
import sys

import trio

import utcp

log = logging.getLogger("echo_server")

RECEIVE_SIZE = 65536


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``utcp.Config`` knobs both echo examples expose on the command line."""
    group = parser.add_argument_group("utcp.Config")
    group.add_argument(
        "--nodelay",
        action="store_true",
        help="disable Nagle's algorithm (trio's own SocketStream sets TCP_NODELAY)",
    )
    group.add_argument("--mss", type=int, default=None, help="maximum segment size, bytes")
    group.add_argument(
        "--congestion-control",
        default=None,
        choices=utcp.available_congestion_controls(),
        help="congestion controller (default: %(default)s, i.e. utcp's default)",
    )
    group.add_argument("--send-buffer", type=int, default=None, help="send buffer, bytes")
    group.add_argument("--receive-buffer", type=int, default=None, help="receive buffer, bytes")


def config_from_args(args: argparse.Namespace) -> utcp.Config:
    """Build a ``utcp.Config`` from the options ``add_config_arguments`` defined."""
    changes: dict[str, object] = {}
    if args.nodelay:
        changes["nodelay"] = True
    if args.mss is not None:
        changes["mss"] = args.mss
    if args.congestion_control is not None:
        changes["congestion_control"] = args.congestion_control
    if args.send_buffer is not None:
        changes["send_buffer_size"] = args.send_buffer
    if args.receive_buffer is not None:
        changes["receive_buffer_size"] = args.receive_buffer
    return utcp.Config().replace(**changes)


async def echo(stream: utcp.UtcpStream, *, name: str = "connection") -> int:
    """Echo everything ``stream`` receives until the peer half-closes; return the byte count.

    Errors of the connection (reset, timeout) are logged, not raised, so that one bad
    client never takes the server down.
    """
    total = 0
    start = trio.current_time()
    try:
        ip, port = stream.getpeername()
        peer = f"{ip}:{port}"
    except (AssertionError, OSError):
        peer = "?"
    log.info("%s from %s", name, peer)
    try:
        async with stream:
            while True:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    break
                await stream.send_all(data)
                total += len(data)
            await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.warning("%s from %s broken: %s", name, peer, exc.__cause__ or exc)
    log.info(
        "%s from %s closed: echoed %d bytes in %.3f s",
        name,
        peer,
        total,
        trio.current_time() - start,
    )
    return total


async def serve(
    host: str,
    port: int,
    config: utcp.Config,
    *,
    task_status: trio.TaskStatus[list[utcp.UtcpListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the echo server forever (until cancelled); reports the listeners once bound."""
    counter = itertools.count(1)

    async def handler(stream: utcp.UtcpStream) -> None:
        await echo(stream, name=f"connection #{next(counter)}")

    await utcp.serve_tcp(handler, port, host=host, config=config, task_status=task_status)


async def run(host: str, port: int, config: utcp.Config) -> int:
    """Serve until SIGINT (Ctrl-C) or SIGTERM, then shut down cleanly and return 0.

    Returns 1 (after saying why) if the port cannot be bound.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            try:
                listeners = await nursery.start(serve, host, port, config)
            except OSError as exc:
                print(f"echo_server: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
                return 1
            for listener in listeners:
                ip, udp_port = listener.getsockname()
                log.info("utcp echo server listening on %s:%d (UDP)", ip, udp_port)
            async for signum in signals:
                log.info("%s received, shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    return 0


def parse_listen(text: str) -> tuple[str | None, int]:
    """``[ADDR:]PORT`` as ``utcp echo-server --listen`` takes it (IPv6 in brackets)."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [IPv6]:PORT, not {text!r}")
        return host, int(port)
    host, _, port = text.rpartition(":")
    return host or None, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--listen",
        metavar="[ADDR:]PORT",
        help="where to listen, like utcp echo-server (default: 127.0.0.1:4747)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=4747, help="UDP/TCP port, 0 for any (default: %(default)s)"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging for utcp")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        config = config_from_args(args)
        if args.listen is not None:
            host, args.port = parse_listen(args.listen)
            args.host = host or "0.0.0.0"
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return trio.run(run, args.host, args.port, config)
    except KeyboardInterrupt:  # only if Ctrl-C lands before the signal receiver is set up
        return 130


if __name__ == "__main__":
    sys.exit(main())
