"""Request/response latency with and without TCP Fast Open (RFC 7413), simulated network.

Each exchange is one new connection from a client host to a server host over a path of
50 ms each way (RTT 100 ms): the client queues a request before its SYN leaves, the server
answers with ``--answer`` bytes, both close. The figure is the time from connect to the
client holding the whole answer, on the virtual clock. With Fast Open the first exchange
fetches the cookie and is left out; every later request rides in its SYN. Random loss
(both directions) is 0, 1% and 5%; the simulation is deterministic per seed.

    python bench/bench_tfo.py [--exchanges 200] [--seed 1] [--answer 1000]
    python bench/bench_tfo.py --emulated [--exchanges 50]

Prints one JSON line per configuration, then a table. ``--emulated`` measures the same over
an emulated link instead (``bench.netem.link.open_link``, spec ``delay 50ms`` each way; root):
``utcp echo-server`` (``--fastopen`` or not) in the server namespace, and in the client's a
loop of ``open_tcp_stream``, a 400-byte request and its echo, each connection on its own UDP
socket; real time, so the figures carry the machine's scheduling noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from utcp import Config
from utcp._connection import Connection
from utcp.testing import SERVER_ADDR, HostPair, LinkConfig, random_payload

ONE_WAY = 0.050
REQUEST = 400


def exchange(pair: HostPair, request: bytes, answer: bytes) -> tuple[float, Connection]:
    """One connection, request then answer: the seconds until the answer is complete, and
    the client's connection."""
    start = pair.now
    client = pair.client.connect(SERVER_ADDR, start)
    client.send(request)
    server: Connection | None = None
    got = bytearray()
    heard = bytearray()
    sent = 0

    def answered() -> bool:
        nonlocal server, sent
        if server is None:
            server = pair.server.accept(SERVER_ADDR[1])
        if server is not None:
            while server.readable:
                heard.extend(server.receive())
            if len(heard) == len(request) and sent < len(answer):
                sent += server.send(answer[sent:])
        while client.readable:
            got.extend(client.receive())
        return len(got) == len(answer)

    pair.net.run(answered, timeout=3600.0)
    elapsed = pair.now - start
    if bytes(got) != answer or bytes(heard) != request or server is None:
        raise AssertionError("an exchange arrived damaged")
    client.close(pair.now)
    server.close(pair.now)
    pair.run_until_closed((client, server))
    return elapsed, client


def measure(fastopen: bool, loss: float, exchanges: int, seed: int, size: int) -> dict[str, object]:
    pair = HostPair(
        seed=seed,
        link=LinkConfig(delay=ONE_WAY, loss=loss),
        client_config=Config(fastopen_connect=fastopen),
        server_config=Config(fastopen_queue=64 if fastopen else 0),
    )
    times: list[float] = []
    data_in_syn = 0
    for i in range(exchanges + 1):
        request = random_payload(seed * 100_000 + i, REQUEST)
        elapsed, client = exchange(pair, request, random_payload(i, size))
        if i:  # the first one fetches the cookie (or warms up the same way without)
            times.append(elapsed)
            data_in_syn += client.stats.fastopen_syn_data_acked
    times.sort()
    return {
        "fastopen": fastopen,
        "one_way_ms": ONE_WAY * 1000,
        "loss": loss,
        "request_bytes": REQUEST,
        "answer_bytes": size,
        "exchanges": exchanges,
        "seed": seed,
        "p50_ms": round(statistics.median(times) * 1000, 1),
        "mean_ms": round(statistics.fmean(times) * 1000, 1),
        "p90_ms": round(times[int(0.9 * (len(times) - 1))] * 1000, 1),
        "requests_in_syn": data_in_syn,
    }


EMULATED_CLIENT = r"""
import json, sys, trio, utcp
host, port, count, fastopen, size = sys.argv[1:6]
port, count, size = int(port), int(count), int(size)

async def main():
    config = utcp.Config(fastopen_connect=fastopen == "1")
    times, in_syn = [], 0
    for i in range(count + 1):
        request = bytes([i % 251]) * size
        start = trio.current_time()
        stream = await utcp.open_tcp_stream(host, port, config=config)
        await stream.send_all(request)
        got = b""
        while len(got) < size:
            got += await stream.receive_some()
        elapsed = trio.current_time() - start
        assert got == request
        if i:  # the first one fetches the cookie (or warms up the same way without)
            times.append(elapsed)
            in_syn += stream.statistics().fastopen["syn_data_acked"]
        await stream.aclose()
    print(json.dumps({"times": times, "in_syn": in_syn}), flush=True)

trio.run(main)
"""


def emulated(exchanges: int) -> list[dict[str, object]]:
    """The same exchanges over bench.netem's emulated 50 ms link (needs root)."""
    try:
        from bench.netem.link import open_link
    except ImportError:
        sys.exit("--emulated needs bench.netem (the emulated link of issue 14)")
    rows: list[dict[str, object]] = []
    for fastopen in (False, True):
        with open_link("delay 50ms", None, mode="emulated") as link:
            argv = [sys.executable, "-m", "utcp", "echo-server", "-q"]
            argv += ["--listen", f"{link.server_host}:4747"] + (["--fastopen"] if fastopen else [])
            server = subprocess.Popen(link.server_cmd(argv))
            try:
                time.sleep(2.0)  # the server binds
                client = [sys.executable, "-c", EMULATED_CLIENT, link.client_connect_host]
                client += ["4747", str(exchanges), "1" if fastopen else "0", str(REQUEST)]
                done = subprocess.run(
                    link.client_cmd(client), capture_output=True, text=True, timeout=600
                )
            finally:
                server.terminate()
                server.wait(10)
            report = link.report()
        if done.returncode != 0:
            sys.exit(f"the client failed: {done.stderr}")
        result = json.loads(done.stdout.splitlines()[-1])
        times = sorted(result["times"])
        rows.append(
            {
                "fastopen": fastopen,
                "link": "emulated, delay 50ms each way",
                "link_valid": report.valid,
                "request_bytes": REQUEST,
                "answer_bytes": REQUEST,
                "exchanges": exchanges,
                "p50_ms": round(statistics.median(times) * 1000, 1),
                "mean_ms": round(statistics.fmean(times) * 1000, 1),
                "p90_ms": round(times[int(0.9 * (len(times) - 1))] * 1000, 1),
                "requests_in_syn": result["in_syn"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--answer", type=int, default=1000)
    parser.add_argument("--emulated", action="store_true", help="over bench.netem's link")
    args = parser.parse_args()
    rows = []
    if args.emulated:
        rows = emulated(args.exchanges)
    else:
        for loss in (0.0, 0.01, 0.05):
            for fastopen in (False, True):
                row = measure(fastopen, loss, args.exchanges, args.seed, args.answer)
                print(json.dumps(row), flush=True)
                rows.append(row)
    print("\n| loss | Fast Open | p50 ms | mean ms | p90 ms | requests in SYN |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {float(r.get('loss', 0.0)):.0%} | {'on' if r['fastopen'] else 'off'} | "
            f"{r['p50_ms']} | {r['mean_ms']} | {r['p90_ms']} | "
            f"{r['requests_in_syn']}/{r['exchanges']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
