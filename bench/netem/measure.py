"""Measure the emulated link on this machine: how many packets per second the forwarder
moves, and how late it releases them, at rising offered loads.

    PYTHONPATH=. python -m bench.netem.measure [--rates 2000,5000,10000,20000,0] [--seconds 2]

For each offered rate (0 = as fast as one sending process can), a UDP sender in the client
namespace blasts 1200-byte datagrams through a clean link (``delay 1ms``) to a counter in
the server namespace; prints one JSON line per rate with the delivered rate, the forwarder's
release lateness and the link's validity verdict. Needs root. ``--sender-fifo`` runs the
sender under SCHED_FIFO (``chrt``), so that on a busy machine it can outpace the forwarder;
it then holds one CPU for the duration of each step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from .link import forwarder_ceiling, open_link

PROBE = [sys.executable, "-m", "bench.netem.probe"]


def measure(rate: float, seconds: float, spec: str, sender_fifo: bool) -> dict[str, Any]:
    with open_link(spec, mode="emulated") as link:
        counter = subprocess.Popen(
            link.server_cmd([*PROBE, "udp-count", "--port", "0", "--idle", "1.0"]),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert counter.stdout is not None
            port = counter.stdout.readline().split()[1]
            argv = [*PROBE, "udp-blast", "--host", link.client_connect_host, "--port", port]
            argv += ["--pps", str(rate), "--seconds", str(seconds), "--size", "1200"]
            if sender_fifo:
                argv = ["chrt", "-f", "5", *argv]
            blast = subprocess.run(
                link.client_cmd(argv),
                capture_output=True,
                text=True,
                timeout=seconds + 60,
                check=True,
            )
            counted = json.loads(counter.stdout.readline())
            counter.wait(timeout=30)
        finally:
            if counter.poll() is None:
                counter.kill()
                counter.wait()
        report = link.report()
    sent = json.loads(blast.stdout)
    return {
        "offered_pps": round(sent["pps"]),
        "delivered_pps": round(counted["pps"]),
        "sent": sent["sent"],
        "received": counted["received"],
        "timing_error_us": [
            report.timing_error_p50_us,
            report.timing_error_p99_us,
            report.timing_error_max_us,
        ],
        "drops": report.drops,
        "peak_pps": report.peak_pps,
        "ceiling_pps": report.ceiling_pps,
        "calibrated_ceiling_pps": report.calibrated_ceiling_pps,
        "peak_busy": report.peak_busy,
        "valid": report.valid,
        "invalid_reason": report.invalid_reason,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.netem.measure")
    parser.add_argument("--rates", default="2000,5000,10000,20000,0")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--spec", default="delay 1ms")
    parser.add_argument(
        "--sender-fifo",
        action="store_true",
        help="run the sender under SCHED_FIFO (chrt) so that a busy machine cannot slow it",
    )
    args = parser.parse_args(argv)
    print(json.dumps({"calibration": forwarder_ceiling()}), flush=True)
    for rate in (float(r) for r in args.rates.split(",")):
        print(json.dumps(measure(rate, args.seconds, args.spec, args.sender_fifo)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
