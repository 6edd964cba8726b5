"""A plain trio echo server and client, written for kernel TCP and never for utcp.

Nothing here imports utcp. Run as is, it speaks kernel TCP; run under ``utcp run`` the
same code speaks TCP over UDP datagrams:

    # one machine, two terminals (pick any port; 0 lets the server choose and print it)
    python -m utcp run --stats examples/dropin_echo.py server --port 4747
    python -m utcp run --stats examples/dropin_echo.py client 127.0.0.1 4747 --size 1000000

    # two machines: on the server (UDP port 4747 must be reachable)
    python -m utcp run examples/dropin_echo.py server --host 0.0.0.0 --port 4747
    # on the client
    python -m utcp run examples/dropin_echo.py client SERVER 4747

TLS with ``trio.SSLStream`` works the same way: ``--tls-cert cert.pem --tls-key key.pem`` on
the server and ``--tls-ca ca.pem`` on the client. The client sends ``--size`` random bytes
while reading the echo, checks that it hashes to the same sha256 and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import signal
import ssl
import sys
from functools import partial

import trio


async def echo(stream: trio.abc.Stream) -> None:
    async with stream:
        while data := await stream.receive_some():
            await stream.send_all(data)


async def serve(args: argparse.Namespace) -> None:
    handler = echo
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)

        async def handler(stream: trio.abc.Stream) -> None:
            with contextlib.suppress(trio.BrokenResourceError):  # a client gone mid-handshake
                await echo(trio.SSLStream(stream, context, server_side=True))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, args.port, host=args.host))
        print("listening on port", listeners[0].socket.getsockname()[1], flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()  # Ctrl-C or SIGTERM: a clean exit
                break


async def client(args: argparse.Namespace) -> None:
    payload = os.urandom(args.size)
    stream: trio.abc.Stream = await trio.open_tcp_stream(args.host, args.port)
    if args.tls_ca:
        context = ssl.create_default_context(cafile=args.tls_ca)
        stream = trio.SSLStream(stream, context, server_hostname=args.host)
    got = hashlib.sha256()
    received = 0
    async with stream, trio.open_nursery() as nursery:

        async def send() -> None:
            await stream.send_all(payload)

        nursery.start_soon(send)
        while received < len(payload):
            chunk = await stream.receive_some()
            if not chunk:
                break
            got.update(chunk)
            received += len(chunk)
    if got.digest() != hashlib.sha256(payload).digest():
        sys.exit(f"echo differs: {received} of {len(payload)} bytes came back")
    print("sha256 ok", got.hexdigest(), received, "bytes", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)
    server_args = sub.add_parser("server")
    server_args.add_argument("--host", default="127.0.0.1")
    server_args.add_argument("--port", type=int, default=4747)
    server_args.add_argument("--tls-cert")
    server_args.add_argument("--tls-key")
    client_args = sub.add_parser("client")
    client_args.add_argument("host")
    client_args.add_argument("port", type=int)
    client_args.add_argument("--size", type=int, default=1_000_000)
    client_args.add_argument("--tls-ca")
    args = parser.parse_args()
    trio.run(serve if args.role == "server" else client, args)


if __name__ == "__main__":
    main()
