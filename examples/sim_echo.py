"""An echo round trip between two utcp cores over the simulated network (no sockets).

Runs on a virtual clock, so the printed round-trip time is the simulated one: twice the
one-way delay you pass, plus nothing else, since the simulated hosts take no CPU time.

    python examples/sim_echo.py --delay 0.025 --message "hello, utcp"
"""

from __future__ import annotations

import argparse

from utcp.testing import HostPair, LinkConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.025, help="one-way delay, seconds")
    parser.add_argument("--loss", type=float, default=0.0, help="loss probability")
    parser.add_argument("--message", default="hello, utcp")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    pair = HostPair(seed=args.seed, link=LinkConfig(delay=args.delay, loss=args.loss), trace=True)
    t0 = pair.now
    client, server = pair.connect()
    print(f"connected in {pair.now - t0:.3f} s (virtual): {client.state} / {server.state}")
    payload = args.message.encode()
    client.send(payload)
    start = pair.now
    echoed = bytearray()

    def echo() -> bool:
        if server.readable:
            server.send(server.receive())
        echoed.extend(client.receive() if client.readable else b"")
        return len(echoed) >= len(payload)

    pair.net.run(echo, timeout=60)
    rtt = pair.now - start
    print(f"echoed {bytes(echoed).decode()!r} in {rtt * 1000:.1f} ms (virtual)")
    client.close(pair.now)
    server.close(pair.now)
    pair.run_until_closed((client, server))
    print(f"closed at t={pair.now:.3f} s; {len(pair.net.trace_records)} trace records")
    assert bytes(echoed) == payload


if __name__ == "__main__":
    main()
