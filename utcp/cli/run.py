"""``utcp run``: run an unmodified trio (or anyio-on-trio) program with its TCP on utcp.

``utcp run [options] script.py ARGS`` or ``utcp run [options] -m package ARGS`` executes the
program as ``python script.py ARGS`` would (same ``sys.argv``, ``__name__ == "__main__"``),
with ``trio.run`` and ``trio.lowlevel.start_guest_run`` wrapped so that every run the
program starts begins with ``utcp.SocketFactory`` installed (through a trio Instrument's
``before_run``, so the program's own root task is unchanged). Like ``torsocks`` for Tor.
What it cannot reach: code that makes stdlib sockets itself (asyncio, anyio's
``create_tcp_listener``, hypercorn's and uvicorn's own binds).
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import trio

from .._api import get_default_config, set_default_config
from .._congestion import available
from .._pcap import PcapWriter
from .._socket import SocketFactory
from .._stream import Statistics


def add_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run a trio program with its TCP carried over utcp",
        description="Run an unmodified trio (or anyio-on-trio) program with every TCP "
        "connection it makes carried over utcp, in every trio.run it starts.",
        usage="utcp run [options] (script.py | -m module) [args ...]",
    )
    parser.add_argument("--congestion", choices=available(), help="congestion control")
    parser.add_argument("--mss", type=int, help="largest segment payload, bytes (64..65495)")
    parser.add_argument("--pcap", metavar="FILE", help="record every datagram as TCP in FILE")
    parser.add_argument(
        "--stats", action="store_true", help="print connection statistics to stderr on exit"
    )
    parser.add_argument(
        "-m",
        dest="module",
        nargs=argparse.REMAINDER,
        metavar="module [args ...]",
        help="run a library module as a script (the rest of the line is its arguments)",
    )
    parser.add_argument("target", nargs=argparse.REMAINDER, help="script.py [args ...]")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    if args.module:
        module, target = args.module[0], args.module[1:]
    elif args.target and args.module is None:
        module, target = None, args.target
    else:
        print("utcp run: give a script or -m module", file=sys.stderr)
        return 2
    changes: dict[str, object] = {}
    if args.congestion:
        changes["congestion_control"] = args.congestion
    if args.mss is not None:
        changes["mss"] = args.mss
    try:
        config = get_default_config().replace(**changes)
    except ValueError as exc:
        print(f"utcp run: {exc}", file=sys.stderr)
        return 2
    pcap_file: BinaryIO | None = open(args.pcap, "wb") if args.pcap else None  # noqa: SIM115
    try:
        factory = SocketFactory(config, pcap=PcapWriter(pcap_file) if pcap_file else None)
        previous_config = get_default_config()
        set_default_config(config)  # the program's own utcp calls, if any, use it too
        try:
            with installed_in_every_run(factory):
                status = run_target(module, target)
        finally:
            set_default_config(previous_config)
            if args.stats:
                print_statistics(factory.connection_statistics())
    finally:
        if pcap_file is not None:
            pcap_file.close()
    return status


class _Installer(trio.abc.Instrument):
    """Installs the factory at the start of a run, before any of the program's code."""

    def __init__(self, factory: SocketFactory) -> None:
        self.factory = factory

    def before_run(self) -> None:
        trio.socket.set_custom_socket_factory(self.factory)


@contextmanager
def installed_in_every_run(factory: SocketFactory) -> Iterator[None]:
    """Wrap ``trio.run`` and ``trio.lowlevel.start_guest_run`` to add the installer."""
    installer = _Installer(factory)
    originals: list[tuple[Any, str, Callable[..., Any]]] = [
        (trio, "run", trio.run),
        (trio.lowlevel, "start_guest_run", trio.lowlevel.start_guest_run),
    ]

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def with_utcp(*args: Any, instruments: Any = (), **kwargs: Any) -> Any:
            return original(*args, instruments=(*instruments, installer), **kwargs)

        with_utcp.__doc__ = original.__doc__
        with_utcp.__wrapped__ = original  # type: ignore[attr-defined]
        return with_utcp

    for owner, name, original in originals:
        setattr(owner, name, wrap(original))
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def run_target(module: str | None, target: list[str]) -> int:
    """Run the program as ``python [-m module | script] ARGS`` would; its exit status."""
    saved_argv, saved_path0 = sys.argv[:], sys.path[0] if sys.path else ""
    try:
        if module is not None:
            sys.argv = [module, *target]
            sys.path[0] = os.getcwd()
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            script = target[0]
            sys.argv = list(target)
            sys.path[0] = os.path.dirname(os.path.abspath(script))
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        return _exit_status(exc.code)
    finally:
        sys.argv = saved_argv
        if sys.path:
            sys.path[0] = saved_path0
    return 0


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def print_statistics(records: list[tuple[tuple[str, int], Statistics]], limit: int = 20) -> None:
    """One line per connection (the last ``limit``), then the totals, on stderr."""
    out = sys.stderr
    print(f"utcp: {len(records)} connection(s)", file=out)
    for (host, port), st in records[-limit:]:
        srtt = f"{st.srtt * 1000:.2f} ms" if st.srtt is not None else "-"
        print(
            f"  {host}:{port} {st.state} sent {st.bytes_sent} B received {st.bytes_received} B "
            f"retransmits {st.retransmits} srtt {srtt} cwnd {st.cwnd} mss {st.mss} "
            f"{st.congestion_control}",
            file=out,
        )
    total = (
        f"utcp: total sent {sum(s.bytes_sent for _, s in records)} B, "
        f"received {sum(s.bytes_received for _, s in records)} B, "
        f"segments sent {sum(s.segments_sent for _, s in records)}, "
        f"received {sum(s.segments_received for _, s in records)}, "
        f"retransmits {sum(s.retransmits for _, s in records)}"
    )
    print(total, file=out)
