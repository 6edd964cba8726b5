"""``utcp cat``: netcat over utcp. ``utcp cat -l [ADDR:]PORT`` accepts one connection,
``utcp cat HOST PORT`` makes one; then standard input goes to the stream and the stream to
standard output. End of file on stdin half-closes the stream (FIN); the command exits once
both directions have ended, with status 0, or with the documented status of what failed.

Standard input and output are read and written by ``os.read``/``os.write`` in trio worker
threads, not with ``trio.lowlevel.FdStream``: FdStream switches the descriptors to
non-blocking mode, which also changes them for every other process sharing them (the shell's
terminal, the other end of a pipeline), and epoll refuses regular files, so ``< file`` and
``> file`` would fail. A thread per 64 KiB chunk costs nothing next to the network.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import Any

import trio

import utcp

from . import common
from .common import CliError, Session, format_address

CHUNK = 65536
STDIN, STDOUT = 0, 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cat",
        help="netcat over utcp: stdin to the stream, the stream to stdout",
        description="Connect to HOST PORT (or accept one connection with -l), copy stdin to "
        "the stream and the stream to stdout; end of file on stdin half-closes the stream. "
        "Exits when both directions have ended.",
    )
    parser.add_argument("target", nargs="*", metavar="HOST PORT", help="where to connect")
    parser.add_argument(
        "-l",
        "--listen",
        metavar="[ADDR:]PORT",
        help="accept one connection here instead of connecting",
    )
    parser.add_argument(
        "-d",
        "--no-stdin",
        action="store_true",
        help="do not read stdin: half-close at once and only receive",
    )
    parser.add_argument(
        "--progress",
        action="store_true",
        help="progress lines on stderr even when it is not a terminal (a terminal gets a "
        "progress bar unless -q)",
    )
    common.add_common_flags(parser, client=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prog = "utcp cat"

    async def main() -> int:
        if args.listen is not None:
            if args.target:
                raise CliError(common.EXIT_USAGE, "give either -l [ADDR:]PORT or HOST PORT")
            where = common.parse_hostport(args.listen, host_optional=True, allow_zero=True)
        elif len(args.target) != 2:
            raise CliError(common.EXIT_USAGE, "expected HOST PORT (or -l [ADDR:]PORT)")
        async with common.session(args, prog) as sess:
            if args.listen is not None:
                stream = await accept_one(sess, where)
            else:
                host = common.parse_host(args.target[0])
                stream = await sess.connect(host, common.parse_port(args.target[1]))
            name = f"connection with {format_address(stream.getpeername())}"
            sess.info(f"{name} established")
            with sess.tracking(stream, name):
                await copy_both_ways(stream, args, sess)
                await common.linger(stream)
        return common.EXIT_OK

    return common.run(args, prog, main)


async def accept_one(sess: Session, where: common.HostPort) -> utcp.UtcpStream:
    listeners = await sess.listen(where)
    winner: list[utcp.UtcpStream] = []
    async with trio.open_nursery() as nursery:

        async def accept(listener: utcp.UtcpListener) -> None:
            stream = await listener.accept()
            if winner:
                await stream.aclose()
                return
            winner.append(stream)
            nursery.cancel_scope.cancel()

        for listener in listeners:
            nursery.start_soon(accept, listener)
    for listener in listeners:
        await listener.aclose()
    return winner[0]


class Progress:
    """Bytes each way: tqdm bars on a terminal, plain lines every second with
    ``--progress`` otherwise, nothing under ``-q``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.sent = 0
        self.received = 0
        self.bars: list[Any] = []
        self.plain = False
        if args.quiet:
            return
        if sys.stderr.isatty():
            from tqdm import tqdm

            size = os.fstat(STDIN).st_size if _is_regular_file(STDIN) else None
            for position, (label, total) in enumerate((("sent", size), ("received", None))):
                bar = tqdm(
                    total=total,
                    desc=label,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    position=position,
                    file=sys.stderr,
                    leave=True,
                )
                self.bars.append(bar)
        else:
            self.plain = args.progress

    def add(self, sent: int = 0, received: int = 0) -> None:
        self.sent += sent
        self.received += received
        if self.bars:
            self.bars[0].update(sent)
            self.bars[1].update(received)

    async def report(self) -> None:
        """Print a line every second (plain mode) until cancelled."""
        if not self.plain:
            return
        start = trio.current_time()
        while True:
            await trio.sleep(1.0)
            elapsed = trio.current_time() - start
            print(
                f"utcp cat: {elapsed:.0f} s: sent {self.sent} B, received {self.received} B",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        for bar in self.bars:
            bar.close()


def _is_regular_file(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def copy_both_ways(stream: utcp.UtcpStream, args: argparse.Namespace, sess: Session) -> None:
    progress = Progress(args)

    async def stdin_to_stream() -> None:
        while not args.no_stdin:
            data = await trio.to_thread.run_sync(os.read, STDIN, CHUNK, abandon_on_cancel=True)
            if not data:
                break
            await stream.send_all(data)
            progress.add(sent=len(data))
        await stream.send_eof()  # RFC 9293 3.6: our FIN, the peer may still send

    async def stream_to_stdout() -> None:
        while True:
            data = await stream.receive_some(CHUNK)
            if not data:
                return
            try:
                await trio.to_thread.run_sync(_write_all, STDOUT, data)
            except BrokenPipeError:
                raise CliError(common.EXIT_FAILURE, "standard output was closed") from None
            progress.add(received=len(data))

    try:
        async with trio.open_nursery() as nursery:
            reporter = trio.CancelScope()

            async def report() -> None:
                with reporter:
                    await progress.report()

            nursery.start_soon(report)
            async with trio.open_nursery() as copies:
                copies.start_soon(stdin_to_stream)
                copies.start_soon(stream_to_stdout)
            reporter.cancel()
    finally:
        progress.close()
    sess.info(f"done: sent {progress.sent} B, received {progress.received} B")
