"""utcp.install(): trio's own TCP helpers, and everything built on them, carried over utcp.

One call at the start of ``trio.run`` and ``trio.serve_tcp``, ``trio.open_tcp_stream``,
``trio.SocketStream``/``SocketListener`` (and httpx, trio-websocket, anyio's connect_tcp on
trio...) speak TCP over UDP datagrams. This runs an echo server and a client in one
process on 127.0.0.1 and prints what crossed the wire:

    python examples/dropin_install.py

Across two machines use ``examples/dropin_echo.py`` under ``python -m utcp run``.
"""

from __future__ import annotations

from functools import partial

import trio

import utcp


async def echo(stream: trio.SocketStream) -> None:
    async with stream:
        while data := await stream.receive_some():
            await stream.send_all(data)


async def main() -> None:
    factory = utcp.SocketFactory()
    utcp.install(factory)  # from here on this run's TCP sockets are utcp sockets
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"hello over utcp")
            print("echoed:", (await stream.receive_some()).decode())
            print("socket:", stream.socket)
            print("statistics:", stream.socket.statistics())
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
