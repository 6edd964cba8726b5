"""``python -m utcp`` and the ``utcp`` console script: ``utcp COMMAND ...``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .cli import run

# Each module registers one subcommand (see utcp.cli).
COMMANDS = (run,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="utcp", description="TCP in user space over UDP datagrams, for trio."
    )
    parser.add_argument("--version", action="version", version=f"utcp {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
