"""Connected ``UtcpStream`` pairs, over real loopback UDP or a ``TrioNetwork``: the stream
makers for ``trio.testing.check_half_closeable_stream`` and for trio-level tests."""

from __future__ import annotations

import itertools

import trio

from .._api import connect_on, listen_on, open_tcp_listeners, open_tcp_stream
from .._config import Config
from .._stream import UtcpStream
from ._trio_net import TrioNetwork

# Tiny buffers: a few bytes fill the peer's window and our send buffer, so send_all blocks
# until the other side reads (the "clogged" stream of trio's conformance checker).
CLOGGED = Config(send_buffer_size=1, receive_buffer_size=1, nodelay=True)

_hosts = itertools.count(1)


async def fill_send_side(stream: UtcpStream, *, settle: float = 0.05, rounds: int = 1000) -> int:
    """Send until neither the peer's window nor our send buffer takes another byte.

    A "clogged" stream in the sense of trio's conformance checker: afterwards
    ``wait_send_all_might_not_block`` blocks until the peer reads. Bounded by ``rounds``;
    returns the bytes sent.
    """
    sent = 0
    for _ in range(rounds):
        conn = stream.conn
        room = conn.send_space
        if room == 0:
            if conn.bytes_in_flight == 0 and conn.unsent:
                return sent  # all sent data acked, the rest held back by a full window
            await trio.sleep(settle)  # let in-flight data be acked, then look again
            continue
        await stream.send_all(b"c" * room)
        sent += room
    raise RuntimeError("the peer kept taking data: the stream never clogged")


async def udp_stream_pair(
    host: str = "127.0.0.1",
    *,
    client_config: Config | None = None,
    server_config: Config | None = None,
) -> tuple[UtcpStream, UtcpStream]:
    """(client, server) connected over real UDP on ``host`` (127.0.0.1 or ::1)."""
    (listener,) = await open_tcp_listeners(0, host=host, config=server_config)
    try:
        port = listener.getsockname()[1]
        client = await open_tcp_stream(host, port, config=client_config)
        server = await listener.accept()
    finally:
        await listener.aclose()
    if client_config is CLOGGED:
        await fill_send_side(client)
    if server_config is CLOGGED:
        await fill_send_side(server)
    return client, server


async def sim_stream_pair(
    net: TrioNetwork,
    *,
    client_config: Config | None = None,
    server_config: Config | None = None,
) -> tuple[UtcpStream, UtcpStream]:
    """(client, server) connected across ``net``; each pair gets fresh 198.18.x.y hosts."""
    n = next(_hosts)
    server_ep = net.endpoint(
        (f"198.18.{n % 250}.{2 + n // 250}", 443), config=server_config, auto_close=True
    )
    client_ep = net.endpoint(
        (f"198.19.{n % 250}.{2 + n // 250}", 40000), config=client_config, auto_close=True
    )
    try:
        listener = await listen_on(server_ep)
        try:
            client = await connect_on(client_ep, server_ep.local_address)
            server = await listener.accept()
        finally:
            await listener.aclose()
    finally:
        server_ep.release()
        client_ep.release()
    if client_config is CLOGGED:
        await fill_send_side(client)
    if server_config is CLOGGED:
        await fill_send_side(server)
    return client, server
