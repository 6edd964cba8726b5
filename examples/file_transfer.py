"""Send one file over utcp: the sender half-closes when the file is sent, the receiver checks
the sha256 on arrival and answers on the still-open other direction.

The sender first writes one JSON line (name, size, sha256), then the file's bytes, then
half-closes (``send_eof``: a FIN, RFC 9293 3.6). The receiver writes what arrives to
``--output`` until end of file, compares size and sha256, and answers ``OK <sha256>`` or
``BAD <reason>`` before closing. Both show progress: a tqdm bar on a terminal, a plain line
per second otherwise. Exit status 0 means the file arrived intact.

On one machine (two terminals):

    .venv/bin/python examples/file_transfer.py receive --listen 127.0.0.1:4748 -o copy.bin
    .venv/bin/python examples/file_transfer.py send 127.0.0.1 4748 some-file.bin

On two machines: ``receive --listen 0.0.0.0:4748 -o copy.bin`` (or ``[::]:4748``) on the
receiver, whose firewall passes UDP 4748, and ``send RECEIVER 4748 FILE`` on the sender.
``--listen 127.0.0.1:0`` picks a free port and prints it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any

import trio

import utcp

CHUNK = 65536
MAX_HEADER = 4096
TIMEOUT = 30.0  # for the connect, and for each read or write to make progress


class Progress:
    """A tqdm bar when stderr is a terminal, else a plain line at most once a second."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, total, 0
        self._last = 0.0
        self._bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit="B", unit_scale=True, file=sys.stderr)

    def add(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = trio.current_time()
        if now - self._last >= 1.0 or self.done == self.total:
            self._last = now
            print(f"{self.label}: {self.done}/{self.total} bytes", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


async def file_sha256(path: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    async with await trio.open_file(path, "rb") as f:
        while chunk := await f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


async def send(host: str, port: int, path: str) -> int:
    size, sha = await file_sha256(path)
    header = {"name": os.path.basename(path), "size": size, "sha256": sha}
    with trio.fail_after(TIMEOUT):
        stream = await utcp.open_tcp_stream(host, port)
    progress = Progress("sent", size)
    async with stream:
        await stream.send_all(json.dumps(header).encode() + b"\n")
        async with await trio.open_file(path, "rb") as f:
            while chunk := await f.read(CHUNK):
                with trio.fail_after(TIMEOUT):
                    await stream.send_all(chunk)
                progress.add(len(chunk))
        await stream.send_eof()  # our FIN: the file is complete; the answer still comes back
        progress.close()
        answer = b""
        with trio.fail_after(TIMEOUT):
            while data := await stream.receive_some():
                answer += data
    print(answer.decode(errors="replace").strip())
    return 0 if answer.startswith(b"OK " + sha.encode()) else 1


async def receive(host: str, port: int, output: str) -> int:
    listeners = await utcp.open_tcp_listeners(port, host=host)
    ip, bound = listeners[0].getsockname()
    print(f"receiving on {ip}:{bound} (UDP)", file=sys.stderr, flush=True)
    stream = await listeners[0].accept()
    for listener in listeners:
        await listener.aclose()
    async with stream:
        buffer = b""
        with trio.fail_after(TIMEOUT):
            while b"\n" not in buffer:
                data = await stream.receive_some()
                if not data or len(buffer) > MAX_HEADER:
                    raise ValueError("no file header")
                buffer += data
        line, _, rest = buffer.partition(b"\n")
        header = json.loads(line)
        digest, size = hashlib.sha256(rest), len(rest)
        progress = Progress(f"received {header['name']}", int(header["size"]))
        progress.add(len(rest))
        async with await trio.open_file(output, "wb") as f:
            await f.write(rest)
            while True:
                with trio.fail_after(TIMEOUT):
                    data = await stream.receive_some(CHUNK)
                if not data:
                    break  # the sender's FIN: the whole file is here
                await f.write(data)
                digest.update(data)
                size += len(data)
                progress.add(len(data))
        progress.close()
        if size != header["size"]:
            verdict = f"BAD size {size}, expected {header['size']}"
        elif digest.hexdigest() != header["sha256"]:
            verdict = f"BAD sha256 {digest.hexdigest()}"
        else:
            verdict = f"OK {digest.hexdigest()}"
        await stream.send_all(verdict.encode() + b"\n")
        await stream.send_eof()
        # Both FINs sent: wait until ours is acknowledged (TIME-WAIT), so the answer has
        # arrived before this process, and its UDP socket, goes away.
        with trio.move_on_after(TIMEOUT):
            while stream.statistics().state not in ("TIME-WAIT", "CLOSED"):
                await trio.sleep(0.01)
    print(f"{output}: {verdict}")
    return 0 if verdict.startswith("OK") else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    tx = sub.add_parser("send", help="send FILE to a receiver")
    tx.add_argument("host", metavar="HOST")
    tx.add_argument("port", metavar="PORT", type=int)
    tx.add_argument("file", metavar="FILE")
    rx = sub.add_parser("receive", help="receive one file")
    rx.add_argument("--listen", default="127.0.0.1:4748", metavar="ADDR:PORT")
    rx.add_argument("-o", "--output", required=True, metavar="FILE")
    args = parser.parse_args(argv)
    try:
        if args.role == "send":
            return trio.run(send, args.host.strip("[]"), args.port, args.file)
        host, _, port = args.listen.rpartition(":")
        return trio.run(receive, host.strip("[]") or None, int(port), args.output)
    except (OSError, ValueError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        print(f"file_transfer: {exc!r}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
