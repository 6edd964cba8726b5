"""The ``utcp`` command line: ``echo-server``/``echo``, ``cat``, ``tunnel`` and ``speedtest``.

Each command lives in its own module with a ``register(subparsers)`` function; ``common``
holds the shared flags, the ``UTCP_*`` environment rule, address parsing and the exit
statuses. Run it as ``python -m utcp.cli COMMAND ...``; docs/cli/ has a guide per command.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

from . import cat, echo, speedtest, tunnel
from .common import EXIT_USAGE, apply_environment

__all__ = ["build_parser", "main"]

Register = Callable[[Any], None]


def build_parser(extra_commands: Sequence[Register] = ()) -> argparse.ArgumentParser:
    """The ``utcp`` parser with one subcommand per module; ``extra_commands`` are more
    ``register(subparsers)`` functions (their flags follow the same environment rule)."""
    parser = argparse.ArgumentParser(
        prog="utcp",
        description="TCP in user space over UDP: echo, cat, tunnel and speedtest tools.",
        epilog="Every --flag can also be set as UTCP_FLAG in the environment "
        "(e.g. UTCP_CONGESTION=newreno); the command line wins.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands: list[Register] = [echo.register, cat.register, tunnel.register, speedtest.register]
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
