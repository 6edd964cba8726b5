"""``utcp echo-server``/``echo``, ``cat`` and ``speedtest`` as real processes on 127.0.0.1,
and the one-line errors with their documented exit statuses."""

from __future__ import annotations

import json
import random
import signal
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from cli_helpers import Spawn, clean_env, cli, free_udp_port, ipv6_available, sha256

from utcp.cli import common

RUN_TIMEOUT = 30.0


@pytest.mark.parametrize(
    ("listen", "host"),
    [
        ("127.0.0.1:0", "127.0.0.1"),
        pytest.param(
            "[::1]:0",
            "::1",
            marks=pytest.mark.skipif(not ipv6_available(), reason="no IPv6 on this machine"),
        ),
    ],
)
def test_echo_round_trips_print_latency_then_summary(spawn: Spawn, listen: str, host: str) -> None:
    server = spawn(cli("echo-server", "--listen", listen))
    port = server.port()
    client = spawn(cli("echo", host, str(port), "--count", "3", "--size", "1000"))
    code, out = client.finish(RUN_TIMEOUT)
    assert code == 0, client.stderr()
    assert [line.split()[2] for line in out.splitlines() if "seq=" in line] == [
        "seq=1",
        "seq=2",
        "seq=3",
    ]
    assert "3 round trips, all echoed intact" in out
    assert " p50 " in out and " p99 " in out
    assert "retransmits" in out and "state TIME-WAIT" in out  # the connection's statistics
    server.wait_for(r"echoed 3000 bytes")


def test_echo_fastopen_shows_the_round_trip_saved(spawn: Spawn) -> None:
    # RFC 7413: the first connection fetches the cookie, the timed one sends in its SYN.
    server = spawn(cli("echo-server", "--listen", "127.0.0.1:0", "--fastopen"))
    port = server.port()
    client = spawn(cli("echo", "127.0.0.1", str(port), "--count", "2", "--fastopen"))
    code, out = client.finish(RUN_TIMEOUT)
    assert code == 0, client.stderr()
    assert "(first message in the SYN)" in out and " ms saved" in out
    assert "fast open: " in out and "syn data acked 1" in out
    server.wait_for(r"echoed 128 bytes")


def test_echo_fastopen_against_a_server_without_it_says_so(spawn: Spawn) -> None:
    server = spawn(cli("echo-server", "--listen", "127.0.0.1:0"))
    port = server.port()
    client = spawn(cli("echo", "127.0.0.1", str(port), "--count", "1", "--fastopen"))
    code, out = client.finish(RUN_TIMEOUT)
    assert code == 0, client.stderr()
    assert "no cookie from the server" in out


def test_pcap_records_the_datagrams_and_stats_print_on_exit(spawn: Spawn, tmp_path: Path) -> None:
    server = spawn(cli("echo-server", "--listen", "127.0.0.1:0"))
    port = server.port()
    pcap = tmp_path / "echo.pcap"
    client = spawn(cli("cat", "127.0.0.1", str(port), "--pcap", str(pcap), "--stats"))
    code, _ = client.finish(RUN_TIMEOUT)
    assert code == 0, client.stderr()
    assert "connection with 127.0.0.1:" in client.stderr() and "state " in client.stderr()
    blob = pcap.read_bytes()
    magic, linktype = struct.unpack_from("<I", blob)[0], struct.unpack_from("<I", blob, 20)[0]
    assert (magic, linktype) == (0xA1B2C3D4, 101)  # pcap, LINKTYPE_RAW
    packets, offset = 0, 24
    while offset < len(blob):
        packets += 1
        offset += 16 + struct.unpack_from("<I", blob, offset + 8)[0]
    assert offset == len(blob) and packets >= 6  # handshake, FIN each way, their ACKs


def test_datagrams_the_kernel_refuses_are_reported_once(spawn: Spawn) -> None:
    # MSS 65495 on both ends: a full segment's datagram exceeds what UDP can carry (65507),
    # so sendto fails with EMSGSIZE on every (re)transmission, as an MTU too large for the
    # path would. The command says so once, then the round trip times out.
    server = spawn(cli("echo-server", "--listen", "127.0.0.1:0", "--mss", "65495"))
    port = server.port()
    argv = ("echo", "127.0.0.1", str(port), "--mss", "65495", "--size", "200000")
    client = spawn(cli(*argv, "--count", "1", "--timeout", "2"))
    assert client.finish(RUN_TIMEOUT)[0] == common.EXIT_TIMED_OUT
    warnings = [line for line in client.stderr_lines if "kernel refused to send" in line]
    assert len(warnings) == 1 and "--mtu" in warnings[0], client.stderr()


def test_cat_carries_stdin_both_ways_and_half_closes(spawn: Spawn, tmp_path: Path) -> None:
    to_server = random.Random(1).randbytes(300_000)
    to_client = random.Random(2).randbytes(200_000)
    files = {name: tmp_path / name for name in ("sin", "sout", "cin", "cout")}
    files["sin"].write_bytes(to_client)
    files["cin"].write_bytes(to_server)
    with (
        open(files["sin"], "rb") as sin,
        open(files["sout"], "wb") as sout,
        open(files["cin"], "rb") as cin,
        open(files["cout"], "wb") as cout,
    ):
        server = spawn(cli("cat", "-l", "127.0.0.1:0"), stdin=sin, stdout=sout)
        port = server.port()
        client = spawn(cli("cat", "127.0.0.1", str(port)), stdin=cin, stdout=cout)
        # Each side ends only after its stdin hit EOF (our FIN) and the peer's FIN arrived.
        assert client.finish(RUN_TIMEOUT)[0] == 0, client.stderr()
        assert server.finish(RUN_TIMEOUT)[0] == 0, server.stderr()
    assert sha256(files["sout"].read_bytes()) == sha256(to_server)
    assert sha256(files["cout"].read_bytes()) == sha256(to_client)


def test_cat_without_stdin_only_receives(spawn: Spawn, tmp_path: Path) -> None:
    data = b"line one\nline two\n"
    source = tmp_path / "in"
    source.write_bytes(data)
    with open(source, "rb") as stdin:
        server = spawn(cli("cat", "-l", "127.0.0.1:0", "-d"))
        port = server.port()
        client = spawn(cli("cat", "127.0.0.1", str(port), "-q"), stdin=stdin)
        assert client.finish(RUN_TIMEOUT) == (0, "")
        code, out = server.finish(RUN_TIMEOUT)
    assert (code, out) == (0, data.decode())


def test_cat_exits_with_the_reset_status_when_the_peer_aborts(spawn: Spawn) -> None:
    server = spawn(cli("cat", "-l", "127.0.0.1:0"), stdin=subprocess.PIPE)
    port = server.port()
    client = spawn(cli("cat", "127.0.0.1", str(port)), stdin=subprocess.PIPE)
    server.wait_for("established")
    client.wait_for("established")
    server.signal(signal.SIGINT)  # Ctrl-C: the server's endpoint closes with a RST
    assert server.finish(RUN_TIMEOUT)[0] == common.EXIT_INTERRUPTED
    assert client.finish(RUN_TIMEOUT)[0] == common.EXIT_RESET, client.stderr()
    assert "connection reset" in one_line_error(client.stderr().split("established")[-1])


def test_speedtest_json_is_well_formed(spawn: Spawn) -> None:
    server = spawn(cli("speedtest", "server", "--listen", "127.0.0.1:0"))
    port = server.port()
    client = spawn(
        cli("speedtest", "client", "127.0.0.1", str(port), "-t", "2", "-P", "2", "--json")
    )
    code, out = client.finish(RUN_TIMEOUT)
    assert code == 0, client.stderr()
    report = json.loads(out)
    assert report["start"]["test"]["parallel"] == 2
    assert len(report["intervals"]) >= 1
    for interval in report["intervals"]:
        assert [s["id"] for s in interval["streams"]] == [1, 2]
        assert {"bytes", "bits_per_second", "retransmits", "cwnd", "rtt"} <= interval["streams"][
            0
        ].keys()
    end = report["end"]
    assert end["sum_sent"]["bytes"] > 0
    assert end["sum_sent"]["bytes"] == end["sum_received"]["bytes"]  # every byte arrived
    assert len(end["streams"]) == 2


def test_speedtest_reverse_prints_intervals_and_both_summaries(spawn: Spawn) -> None:
    server = spawn(cli("speedtest", "server", "--listen", "127.0.0.1:0"))
    port = server.port()
    client = spawn(cli("speedtest", "client", "127.0.0.1", str(port), "-t", "1", "-R"))
    code, out = client.finish(RUN_TIMEOUT)
    assert code == 0, client.stderr()
    lines = out.splitlines()
    assert any(line.startswith("[  1]   0.00-1.00") and "bits/sec" in line for line in lines)
    assert any(line.endswith("sender") for line in lines)
    assert any(line.endswith("receiver") for line in lines)


# ------------------------------------------------------------------ errors


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    return lines[0]


def test_unknown_host(spawn: Spawn) -> None:
    proc = spawn(cli("echo", "no-such-host.invalid", "4747"))
    assert proc.finish(RUN_TIMEOUT)[0] == common.EXIT_UNKNOWN_HOST
    assert "unknown host 'no-such-host.invalid'" in one_line_error(proc.stderr())


@pytest.mark.parametrize(
    "argv",
    [
        ("echo-server", "--listen", "::1:4747"),
        ("echo-server", "--listen", "127.0.0.1:99999"),
        ("cat", "-l", "localhost:"),
        ("tunnel", "client", "--listen", "0", "--to", "no-port-here"),
        ("tunnel", "server", "--listen", "[::1:0", "--to", "127.0.0.1:22"),
        ("echo", "127.0.0.1", "port"),
    ],
)
def test_malformed_address(spawn: Spawn, argv: tuple[str, ...]) -> None:
    proc = spawn(cli(*argv))
    assert proc.finish(RUN_TIMEOUT)[0] == common.EXIT_BAD_ADDRESS, proc.stderr()
    assert "bad " in one_line_error(proc.stderr())


def test_port_in_use(spawn: Spawn) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        proc = spawn(cli("echo-server", "--listen", f"127.0.0.1:{port}"))
        assert proc.finish(RUN_TIMEOUT)[0] == common.EXIT_ADDRESS_IN_USE
    assert "address already in use" in one_line_error(proc.stderr())


def test_refused_when_nothing_listens(spawn: Spawn) -> None:
    # A closed UDP port draws an ICMP port unreachable, which the endpoint maps to "refused"
    # at once (RFC 1122 4.2.3.9): the 20 s connect timeout is never reached.
    port = free_udp_port()
    proc = spawn(cli("echo", "127.0.0.1", str(port), "--connect-timeout", "20"))
    code, _ = proc.finish(RUN_TIMEOUT)
    assert code == common.EXIT_REFUSED
    assert "refused" in one_line_error(proc.stderr())


def test_timed_out_when_the_server_never_answers(spawn: Spawn) -> None:
    # A UDP socket that swallows every datagram: no answer, no ICMP error. The connect
    # timeout comes from the environment (UTCP_CONNECT_TIMEOUT), as every flag can.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        port = sink.getsockname()[1]
        proc = spawn(cli("echo", "127.0.0.1", str(port)), env=clean_env(UTCP_CONNECT_TIMEOUT="1"))
        assert proc.finish(RUN_TIMEOUT)[0] == common.EXIT_TIMED_OUT
    assert "timed out" in one_line_error(proc.stderr())


def test_environment_gives_flags_and_the_command_line_wins(spawn: Spawn) -> None:
    server = spawn(
        cli("echo-server"),
        env=clean_env(UTCP_LISTEN="127.0.0.1:0", UTCP_CONGESTION="newreno"),
    )
    port = server.port()
    env = clean_env(UTCP_CONGESTION="newreno", UTCP_COUNT="2", UTCP_QUIET="yes")
    client = spawn(cli("echo", "127.0.0.1", str(port), "--congestion", "ledbat"), env=env)
    code, out = client.finish(RUN_TIMEOUT)
    assert code == 0, client.stderr()
    assert out.count("seq=") == 2
    assert "connection: state TIME-WAIT, ledbat," in out
    assert client.stderr() == ""  # UTCP_QUIET=yes


def test_bad_environment_value_is_a_usage_error(spawn: Spawn) -> None:
    proc = spawn(cli("echo", "127.0.0.1", "1"), env=clean_env(UTCP_STATS="maybe"))
    assert proc.finish(RUN_TIMEOUT)[0] == common.EXIT_USAGE
    assert "UTCP_STATS='maybe'" in proc.stderr()
