"""The command line's shared parts, in-process: address parsing, the UTCP_* environment
rule, the MSS an MTU allows, and the error -> exit status table."""

from __future__ import annotations

import argparse
import errno
import sys

import pytest
import trio

from utcp.cli import build_parser, common
from utcp.cli.common import CliError, HostPort, parse_hostport

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup


@pytest.mark.parametrize(
    ("text", "optional", "expected"),
    [
        ("127.0.0.1:80", False, HostPort("127.0.0.1", 80)),
        ("example.com:443", False, HostPort("example.com", 443)),
        ("[::1]:4747", False, HostPort("::1", 4747)),
        ("[fe80::1%eth0]:22", False, HostPort("fe80::1%eth0", 22)),
        ("4747", True, HostPort(None, 4747)),
        ("[::]:0", True, HostPort("::", 0)),
        (":5201", True, HostPort(None, 5201)),
    ],
)
def test_addresses_parse(text: str, optional: bool, expected: HostPort) -> None:
    assert parse_hostport(text, host_optional=optional, allow_zero=True) == expected


@pytest.mark.parametrize(
    "text",
    ["::1:80", "[::1]80", "[::1", "host", ":80", "host:", "host:http", "host:70000", "a b:1"],
)
def test_malformed_addresses_raise_bad_address(text: str) -> None:
    with pytest.raises(CliError) as exc:
        parse_hostport(text, host_optional=False)
    assert exc.value.code == common.EXIT_BAD_ADDRESS


def test_port_zero_only_where_allowed() -> None:
    with pytest.raises(CliError):
        parse_hostport("host:0", host_optional=False)
    assert parse_hostport("host:0", host_optional=False, allow_zero=True).port == 0


def test_mtu_derives_the_mss_per_family() -> None:
    # WIRE.md "Sizes": 1500 - 20 - 8 - 20 and 1500 - 40 - 8 - 20.
    assert common.mss_for_mtu(1500, ipv6=False) == 1452
    assert common.mss_for_mtu(1500, ipv6=True) == 1432
    args = build_parser().parse_args(["echo", "h", "1", "--mtu", "1280"])
    assert common.config_for(args, ipv6=True).mss == 1212
    assert common.config_for(args, ipv6=False).mss == 1232


def test_environment_fills_every_long_flag_and_the_command_line_wins() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("x")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--to", required=True)
    p.add_argument("-q", "--quiet", action="store_true")
    common.apply_environment(parser, {"UTCP_COUNT": "7", "UTCP_TO": "h:1", "UTCP_QUIET": "on"})
    args = parser.parse_args(["x"])
    assert (args.count, args.to, args.quiet) == (7, "h:1", True)
    assert parser.parse_args(["x", "--count", "3"]).count == 3


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["echo-server"],
        ["echo"],
        ["cat"],
        ["tunnel", "server"],
        ["tunnel", "client"],
        ["speedtest", "server"],
        ["speedtest", "client"],
    ):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([*argv, "--help"])
        assert exc.value.code == 0
        assert "--congestion" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ConnectionRefusedError("x"), common.EXIT_REFUSED),
        (TimeoutError("x"), common.EXIT_TIMED_OUT),
        (ConnectionResetError("x"), common.EXIT_RESET),
        (OSError(errno.EADDRINUSE, "x"), common.EXIT_ADDRESS_IN_USE),
        (OSError(errno.ENETUNREACH, "x"), common.EXIT_NETWORK),
        (CliError(common.EXIT_UNKNOWN_HOST, "x"), common.EXIT_UNKNOWN_HOST),
        (ValueError("x"), common.EXIT_FAILURE),
    ],
)
def test_errors_map_to_documented_statuses(exc: BaseException, code: int) -> None:
    assert common.classify(exc)[0] == code
    broken = trio.BrokenResourceError("broken")
    broken.__cause__ = exc
    group = ExceptionGroup("g", [broken if isinstance(exc, OSError) else exc])
    assert common.classify(group)[0] == code
