"""A kernel-TCP peer for the tunnel tests, run as its own process (also inside a network
namespace): connect to (``client``) or accept one connection on (``server``) HOST PORT, send
NBYTES of seeded data and shut down writing while reading to end of file, then print one JSON
line with the sha256 of what was sent and of what was received.

    python tests/cli/kernel_peer.py server 127.0.0.1 0 NBYTES SEED [IDLE]
    python tests/cli/kernel_peer.py client 127.0.0.1 PORT NBYTES SEED [IDLE]

A server prints ``READY <port>`` on stderr once listening. With IDLE, the first half is sent,
then nothing for IDLE seconds, then the second half. A watchdog ends the process after 120 s.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import socket
import sys
import threading
import time


def main() -> None:
    signal.alarm(120)
    mode, host, port_text, nbytes_text, seed_text = sys.argv[1:6]
    idle = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    port, nbytes = int(port_text), int(nbytes_text)
    data = random.Random(int(seed_text)).randbytes(nbytes)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if mode == "server":
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(1)
            print("READY", listener.getsockname()[1], file=sys.stderr, flush=True)
            listener.settimeout(100)
            sock, _ = listener.accept()
    else:
        sock = socket.create_connection((host, port), timeout=100)
    sock.settimeout(100)
    result: dict[str, object] = {"sent_sha256": hashlib.sha256(data).hexdigest()}

    def sender() -> None:
        try:
            half = len(data) // 2 if idle else len(data)
            sock.sendall(data[:half])
            if idle:
                time.sleep(idle)
                sock.sendall(data[half:])
            sock.shutdown(socket.SHUT_WR)
            result["sent"] = len(data)
        except OSError as exc:
            result["send_error"] = repr(exc)

    thread = threading.Thread(target=sender)
    thread.start()
    digest = hashlib.sha256()
    received = 0
    try:
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
    except OSError as exc:
        result["recv_error"] = repr(exc)
    thread.join(100)
    result.update(received=received, received_sha256=digest.hexdigest())
    sock.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
