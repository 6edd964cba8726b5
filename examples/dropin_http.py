"""An ordinary trio HTTP/1.1 server (h11 on ``trio.serve_tcp``) and client (``httpx``), put on
utcp by one line: ``utcp.install()``.

Everything below ``utcp.install()`` is the code you would write for kernel TCP; with the
install line every TCP socket of the run is a utcp socket, so HTTP travels as TCP segments in
UDP datagrams. ``--kernel-tcp`` skips that line, to compare. Needs ``pip install httpx h11``
(both are in utcp's ``test`` extra).

The server answers ``GET /`` with a short text and ``GET /bytes/N`` with N deterministic
bytes: ``bytes(range(251))`` repeated and cut to N. The client makes ``--count`` requests for
``--path`` (after one ``GET /``) on one kept-alive connection and prints, per request, the
status, the body length and its sha256.

On one machine (two terminals):

    .venv/bin/python examples/dropin_http.py server --listen 127.0.0.1:4750
    .venv/bin/python examples/dropin_http.py client 127.0.0.1 4750 --path /bytes/1000000

On two machines: ``server --listen 0.0.0.0:4750`` (or ``[::]:4750``) on the server, whose
firewall passes UDP 4750, and ``client SERVER 4750`` on the other. ``--listen 127.0.0.1:0``
picks a free port and prints it.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import signal
import sys
from functools import partial

import h11
import httpx
import trio

import utcp

PATTERN = bytes(range(251))
CHUNK = 65536
MAX_BYTES = 1 << 30


def deterministic_bytes(n: int) -> bytes:
    """What ``GET /bytes/N`` answers."""
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


# --- the server: plain trio + h11 -------------------------------------------------------------


async def next_event(conn: h11.Connection, stream: trio.abc.Stream) -> object:
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await stream.receive_some(CHUNK))
    return event


def route(target: bytes) -> tuple[int, bytes]:
    if target == b"/":
        return 200, b"hello from trio, over whatever TCP this process has\n"
    if target.startswith(b"/bytes/") and target[7:].isdigit() and int(target[7:]) <= MAX_BYTES:
        return 200, deterministic_bytes(int(target[7:]))
    return 404, b"not found\n"


async def handle(counter: itertools.count[int], stream: trio.SocketStream) -> None:
    number, requests = next(counter), 0
    ip, port = stream.socket.getpeername()[:2]
    conn = h11.Connection(h11.SERVER)
    try:
        async with stream:
            while isinstance(request := await next_event(conn, stream), h11.Request):
                while not isinstance(await next_event(conn, stream), h11.EndOfMessage):
                    pass  # a request body is read and ignored
                status, body = route(request.target)
                headers = [("content-type", "application/octet-stream")]
                headers.append(("content-length", str(len(body))))
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
                for start in range(0, len(body), CHUNK):
                    await stream.send_all(conn.send(h11.Data(data=body[start : start + CHUNK])))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                requests += 1
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
    except (h11.RemoteProtocolError, trio.BrokenResourceError) as exc:
        print(f"connection #{number}: {exc!r}", file=sys.stderr, flush=True)
    print(
        f"connection #{number} from {ip}:{port}: {requests} requests", file=sys.stderr, flush=True
    )


async def server(host: str | None, port: int, kernel_tcp: bool) -> None:
    if not kernel_tcp:
        utcp.install()  # the one line: from here on, TCP sockets of this run are utcp sockets
    async with trio.open_nursery() as nursery:
        serve = partial(trio.serve_tcp, partial(handle, itertools.count(1)), port, host=host)
        listeners = await nursery.start(serve)
        for listener in listeners:
            ip, bound = listener.socket.getsockname()[:2]
            print(f"HTTP listening on {ip}:{bound}", file=sys.stderr, flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()  # Ctrl-C or SIGTERM: a clean exit
                break


# --- the client: plain httpx ------------------------------------------------------------------


async def client(host: str, port: int, path: str, count: int, kernel_tcp: bool) -> int:
    if not kernel_tcp:
        utcp.install()
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    failed = 0
    async with httpx.AsyncClient(base_url=f"http://{authority}", trust_env=False) as http:
        for target in ["/"] + [path] * count:
            response = await http.get(target, timeout=30)
            sha = hashlib.sha256(response.content).hexdigest()
            print(f"GET {target} {response.status_code} {len(response.content)} bytes sha256 {sha}")
            failed += response.status_code != 200
    return 1 if failed else 0


def parse_listen(text: str) -> tuple[str | None, int]:
    """``[ADDR:]PORT`` (IPv6 in brackets), as ``utcp echo-server --listen`` takes it."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [IPv6]:PORT, not {text!r}")
        return host, int(port)
    host, _, port = text.rpartition(":")
    return host or None, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    server_args = sub.add_parser("server")
    server_args.add_argument("--listen", default="127.0.0.1:4750", metavar="[ADDR:]PORT")
    client_args = sub.add_parser("client")
    client_args.add_argument("host", metavar="HOST")
    client_args.add_argument("port", metavar="PORT", type=int)
    client_args.add_argument("--path", default="/bytes/1000000")
    client_args.add_argument("--count", type=int, default=3, help="requests for --path")
    for role_args in (server_args, client_args):
        role_args.add_argument("--kernel-tcp", action="store_true", help="skip utcp.install()")
    args = parser.parse_args(argv)
    try:
        if args.role == "server":
            try:
                host, port = parse_listen(args.listen)
            except ValueError as exc:
                parser.error(str(exc))
            trio.run(server, host or "0.0.0.0", port, args.kernel_tcp)
            return 0
        return trio.run(
            client, args.host.strip("[]"), args.port, args.path, args.count, args.kernel_tcp
        )
    except (OSError, httpx.HTTPError) as exc:
        print(f"dropin_http: {exc!r}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
