"""The ``utcp`` command line: ``echo-server``/``echo``, ``cat``, ``tunnel``, ``speedtest`` and
``run`` (the drop-in launcher).

Each command lives in its own module with a ``register(subparsers)`` function (``run`` calls
it ``add_parser``); ``common`` holds the shared flags, the ``UTCP_*`` environment rule,
address parsing and the exit statuses. Run it as ``utcp COMMAND ...`` or
``python -m utcp COMMAND ...``; docs/cli/ has a guide per command.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

from .. import __version__
from . import cat, echo, run, speedtest, tunnel
from .common import EXIT_USAGE, apply_environment

__all__ = ["build_parser", "main"]

Register = Callable[[Any], None]


def build_parser(extra_commands: Sequence[Register] = ()) -> argparse.ArgumentParser:
    """The ``utcp`` parser with one subcommand per module; ``extra_commands`` are more
    ``register(subparsers)`` functions (their flags follow the same environment rule)."""
    parser = argparse.ArgumentParser(
        prog="utcp",
        description="TCP in user space over UDP: echo, cat, tunnel, speedtest, and run (drop-in).",
        epilog="Every --flag can also be set as UTCP_FLAG in the environment "
        "(e.g. UTCP_CONGESTION=newreno); the command line wins.",
    )
    parser.add_argument("--version", action="version", version=f"utcp {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands: list[Register] = [
        echo.register,
        cat.register,
        tunnel.register,
        speedtest.register,
        run.add_parser,
    ]
    for register in [*commands, *extra_commands]:
        register(subparsers)
    apply_environment(parser, dict(os.environ))
    return parser


def main(argv: list[str] | None = None, extra_commands: Sequence[Register] = ()) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return its exit status.

    A command's ``register`` adds a subparser whose defaults include ``func``: called with
    the parsed arguments, it returns the exit status."""
    parser = build_parser(extra_commands)
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_usage()
        return EXIT_USAGE
    return func(args)
