"""utcp.anyio: anyio's connect_tcp and create_tcp_listener, over utcp (trio backend).

anyio's own ``create_tcp_listener`` binds kernel sockets itself, so an anyio server uses
``utcp.anyio.create_tcp_listener`` (same arguments, same ``anyio.abc.SocketListener``
contract); clients use ``utcp.anyio.connect_tcp`` (or anyio's own ``connect_tcp`` under
``utcp.install()``). One process, 127.0.0.1, with TLS when ``--tls`` is given (needs the
``trustme`` package for a throwaway certificate):

    python examples/dropin_anyio.py
    python examples/dropin_anyio.py --tls
"""

from __future__ import annotations

import argparse
import ssl

import anyio
import anyio.abc
from anyio.streams.tls import TLSListener

import utcp.anyio


async def echo(stream: anyio.abc.ByteStream) -> None:
    async with stream:
        try:
            while True:
                await stream.send(await stream.receive())
        except anyio.EndOfStream:
            pass


async def main(use_tls: bool) -> None:
    listener: anyio.abc.Listener[anyio.abc.ByteStream]
    listener = multi = await utcp.anyio.create_tcp_listener(local_host="127.0.0.1")
    port = multi.extra(anyio.abc.SocketAttribute.local_port)
    client_context: ssl.SSLContext | None = None
    if use_tls:
        import trustme

        ca = trustme.CA()
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_context)
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        listener = TLSListener(multi, server_context)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo)
        stream = await utcp.anyio.connect_tcp(
            "127.0.0.1",
            port,
            ssl_context=client_context,
            tls_hostname="127.0.0.1" if use_tls else None,
        )
        async with stream:
            await stream.send(b"hello from anyio over utcp")
            print("echoed:", (await stream.receive()).decode())
            print("remote:", stream.extra(anyio.abc.SocketAttribute.remote_address))
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tls", action="store_true", help="TLS on top (needs trustme)")
    anyio.run(main, parser.parse_args().tls, backend="trio")
