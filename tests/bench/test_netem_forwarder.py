"""bench/netem/forwarder.py in-process (datagram socket pairs stand in for the TUN devices)
and its control protocol as a process. No root needed."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from bench.netem import link as link_module
from bench.netem.forwarder import LoadMeter, TimingHistogram, TunForwarder


def test_timing_histogram_quantiles_in_microseconds() -> None:
    hist = TimingHistogram()
    for us in range(1, 101):
        hist.add(us * 1e-6)
    hist.add(-5e-6)  # never negative: released early counts as on time
    assert hist.to_dict() == {
        "timing_samples": 101,
        "timing_error_p50_us": 50,
        "timing_error_p99_us": 99,
        "timing_error_max_us": 100,
    }


def test_load_meter_keeps_the_busiest_window() -> None:
    meter = LoadMeter(window=0.25)
    meter.note(100, 0.01, 10.01)
    meter.note(150, 0.02, 10.20)  # same window: 250 packets, 0.03 s of work
    meter.note(10, 0.001, 10.30)  # next window
    assert meter.peak_pps == pytest.approx(1000.0)
    assert meter.peak_busy == pytest.approx(0.12)
    assert meter.effective_ceiling() == pytest.approx(260 / 0.031)


@pytest.fixture
def pairs() -> Iterator[tuple[socket.socket, socket.socket, socket.socket, socket.socket]]:
    a_outer, a_inner = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b_inner, b_outer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    socks = (a_outer, a_inner, b_inner, b_outer)
    for sock in socks:
        sock.setblocking(False)
    yield socks
    for sock in socks:
        sock.close()


def test_forwarder_holds_packets_for_the_delay_each_way(
    pairs: tuple[socket.socket, socket.socket, socket.socket, socket.socket],
) -> None:
    a_outer, a_inner, b_inner, b_outer = pairs
    fwd = TunForwarder(a_inner.fileno(), b_inner.fileno(), "delay 20ms", "delay 5ms", seed=1)
    start = time.monotonic()
    for i in range(5):
        a_outer.send(b"to b %d" % i)
    b_outer.send(b"to a")
    fwd.read_from(a_inner.fileno(), start)
    fwd.read_from(b_inner.fileno(), start)
    arrivals: dict[bytes, float] = {}
    deadline = start + 2.0
    while len(arrivals) < 6 and time.monotonic() < deadline:
        due = fwd.next_deadline()
        assert due is not None
        time.sleep(max(0.0, due - time.monotonic()))
        fwd.flush(time.monotonic())
        for sock in (a_outer, b_outer):
            while True:
                try:
                    arrivals[sock.recv(100)] = time.monotonic() - start
                except BlockingIOError:
                    break
    assert sorted(arrivals) == [b"to a"] + [b"to b %d" % i for i in range(5)]
    assert 0.005 <= arrivals[b"to a"] < 0.020 <= min(v for k, v in arrivals.items() if k != b"to a")
    report = fwd.report()
    assert report["forward"]["sent"] == 5 and report["reverse"]["sent"] == 1
    assert report["timing_samples"] == 6 and report["write_errors"] == 0


def test_proxy_process_answers_its_control_lines() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.netem.forwarder", "proxy", "--spec", "delay 1ms"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=link_module._forwarder_env(),
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        assert process.stdout.readline() == "ready\n"
        lines = []
        for command in ("map 9", "stats", "what", "stop"):
            process.stdin.write(command + "\n")
            process.stdin.flush()
            lines.append(process.stdout.readline().strip())
        assert lines[0].startswith("port ") and int(lines[0].split()[1]) > 0
        assert json.loads(lines[1])["forward"]["received"] == 0
        assert lines[2] == "error unknown command"
        assert json.loads(lines[3])["timing_samples"] == 0
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdin.close()
        process.stdout.close()


def test_calibration_reports_a_positive_ceiling() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.netem.forwarder", "calibrate"],
        capture_output=True,
        text=True,
        timeout=60,
        env=link_module._forwarder_env(),
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["ceiling_pps"] > 1000 and len(result["trials_pps"]) == 3
