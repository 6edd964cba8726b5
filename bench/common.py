"""Pieces shared by the benchmark programs (``bench_loopback.py``, ``bench_compare.py`` and
the ``python -m bench`` harness): the server side of the byte-stream and raw-UDP
protocols, percentiles, and the facts about the machine and tree a result is recorded with.

Stream protocol, chosen per connection by its first byte:
  * ``B`` (bulk): count bytes until EOF, answer with the count (8 bytes, big-endian), close.
  * ``E`` (echo): echo everything until EOF.
  * ``M`` (messages): read 8-byte big-endian sizes until EOF; answer each with that many
    bytes (the response-message latency test).

Raw UDP protocol (the first byte of each datagram): ``S`` starts a counting session for
the sender's address (answered by ``s``), ``D`` datagrams are counted, ``F`` asks for the
count (answered by ``R`` and a JSON report), ``P`` pings are echoed as they are.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import trio

Json = dict[str, Any]

CHUNK = 65536  # application write/read size of the stream workloads
SIZE = struct.Struct("!Q")
MAX_MESSAGE = 1 << 30  # an ``M`` request for more than this is a protocol error

# UDP message types (first byte of each datagram).
UDP_START, UDP_STARTED, UDP_DATA, UDP_FINISH, UDP_REPORT, UDP_PING = b"SsDFRP"

ROOT = Path(__file__).resolve().parent.parent


def emit(record: Json) -> None:
    """One JSON line on stdout (the way every bench program reports)."""
    print(json.dumps(record), flush=True)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of an already sorted, non-empty list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def read_line(stream: IO[str], timeout: float) -> str:
    """One line from a subprocess's pipe, or "" if none comes within ``timeout`` seconds
    (the read goes on in a daemon thread, so a silent child cannot hang the bench)."""
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return line[0] if line else ""


def stop_process(proc: subprocess.Popen[str]) -> None:
    """End a server subprocess by its PID: SIGTERM, SIGKILL if it is still there after 10 s
    (a profiled server dumps its stats first); then close its pipes."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5.0)
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (Linux /proc VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc status")


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = await stream.receive_some(min(size - len(buf), CHUNK))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {size} bytes")
        buf += chunk
    return bytes(buf)


async def serve_stream(stream: trio.abc.HalfCloseableStream) -> None:
    """The server side of one connection of the stream protocol (see the module doc)."""
    try:
        async with stream:
            first = await stream.receive_some(CHUNK)
            if not first:
                return
            mode, rest = first[:1], first[1:]
            if mode == b"B":
                total = len(rest)
                while data := await stream.receive_some(CHUNK):
                    total += len(data)
                await stream.send_all(SIZE.pack(total))
                await stream.send_eof()
            elif mode == b"E":
                if rest:
                    await stream.send_all(rest)
                while data := await stream.receive_some(CHUNK):
                    await stream.send_all(data)
                await stream.send_eof()
            elif mode == b"M":
                await serve_messages(stream, bytearray(rest))
    except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError) as exc:
        print(f"bench server: connection broken: {exc!r}", file=sys.stderr)


async def serve_messages(stream: trio.abc.HalfCloseableStream, pending: bytearray) -> None:
    payload = memoryview(bytes(CHUNK))
    while True:
        while len(pending) < SIZE.size:
            data = await stream.receive_some(CHUNK)
            if not data:
                await stream.send_eof()
                return
            pending += data
        (size,) = SIZE.unpack(pending[: SIZE.size])
        del pending[: SIZE.size]
        if size > MAX_MESSAGE:
            raise EOFError(f"message request of {size} bytes")
        while size:
            n = min(size, CHUNK)
            await stream.send_all(payload[:n])
            size -= n


@dataclass
class UdpSession:
    """What the UDP sink counted for one client address."""

    datagrams: int = 0
    payload_bytes: int = 0
    first: float = 0.0
    last: float = 0.0


async def serve_udp(sock: trio.socket.SocketType) -> None:
    """The raw UDP side: count ``D`` datagrams between ``S`` and ``F``, echo ``P`` ones.

    Pings are answered through a duplicate of the socket's descriptor with a plain
    non-blocking ``sendto``, as a UDP stack on trio sends (utcp's transport does): trio's own
    ``sendto`` resolves the address on every call, a cost of trio's API and not of UDP, which
    would make the ping-pong floor look higher than it is."""
    sessions: dict[Any, UdpSession] = {}
    raw = socket.socket(sock.family, socket.SOCK_DGRAM, fileno=os.dup(sock.fileno()))
    raw.setblocking(False)
    with raw:
        await _serve_udp(sock, raw, sessions)


async def _serve_udp(
    sock: trio.socket.SocketType, raw: socket.socket, sessions: dict[Any, UdpSession]
) -> None:
    while True:
        data, addr = await sock.recvfrom(65536)
        if not data:
            continue
        kind = data[0]
        if kind == UDP_DATA:
            s = sessions.get(addr)
            if s is None:
                continue
            now = time.perf_counter()
            if not s.datagrams:
                s.first = now
            s.last = now
            s.datagrams += 1
            s.payload_bytes += len(data) - 1
        elif kind == UDP_PING:
            try:
                raw.sendto(data, addr)
            except BlockingIOError:
                await sock.sendto(data, addr)
        elif kind == UDP_START:
            sessions[addr] = UdpSession()
            await sock.sendto(bytes([UDP_STARTED]), addr)
        elif kind == UDP_FINISH:
            s = sessions.get(addr, UdpSession())
            report = {
                "datagrams": s.datagrams,
                "bytes": s.payload_bytes,
                "seconds": s.last - s.first,
            }
            await sock.sendto(bytes([UDP_REPORT]) + json.dumps(report).encode(), addr)


async def udp_request(
    sock: trio.socket.SocketType, addr: tuple[str, int], msg: bytes, reply_kind: int
) -> bytes:
    """Send ``msg`` until a reply of ``reply_kind`` comes back (20 tries, 0.25 s apart)."""
    for _ in range(20):
        await sock.sendto(msg, addr)
        with trio.move_on_after(0.25):
            while True:
                data = await sock.recv(65536)
                if data and data[0] == reply_kind:
                    return data
    raise TimeoutError(f"no {chr(reply_kind)!r} reply from the UDP server")


async def watch_parent(nursery: trio.Nursery) -> None:
    """Cancel ``nursery`` when stdin reaches EOF (the parent went away or closed it)."""
    fd = sys.stdin.fileno()
    while True:
        await trio.lowlevel.wait_readable(fd)
        if not os.read(fd, 4096):
            nursery.cancel_scope.cancel()
            return


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def git_describe() -> str | None:
    """The tree's short commit, with ``+dirty utcp/`` when utcp/ has uncommitted changes."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "utcp"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return f"{rev}{'+dirty utcp/' if dirty else ''}" if rev else None


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def loadavg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def compiled_core() -> bool:
    """Whether the ``utcp`` imported runs the compiled core (bench/build_compiled.py)."""
    import utcp._connection

    return not (utcp._connection.__file__ or "").endswith(".py")
