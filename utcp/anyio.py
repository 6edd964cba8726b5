"""anyio's TCP entry points over utcp: ``connect_tcp`` and ``create_tcp_listener``.

anyio's own ``connect_tcp`` on the trio backend makes its socket through trio's socket
factory, so ``utcp.install()`` already moves it to utcp; anyio's ``create_tcp_listener``
binds stdlib sockets itself and cannot be redirected. These functions take anyio's
arguments and keep anyio's contract (``anyio.abc.SocketStream`` / ``SocketListener``,
``EndOfStream``, ``ClosedResourceError``, ``BrokenResourceError``, ``BusyResourceError``,
TLS through ``anyio.streams.tls.TLSStream``), over utcp.

``SocketAttribute`` extras: ``family``, ``local_address``/``local_port`` and
``remote_address``/``remote_port`` are the connection's UDP addresses, which is where a
peer reaches it. ``raw_socket`` is the **UDP socket** the connection travels on (shared by
every connection of its endpoint, and by a listener's accepted connections): reading or
writing it directly corrupts utcp's traffic; it is there for introspection only.

utcp runs on trio: under anyio's asyncio backend every function here raises RuntimeError
at once.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import trio
from anyio.streams.stapled import MultiListener
from anyio.streams.tls import TLSStream

from ._api import (
    UtcpListener,
    connect_on,
    get_default_config,
    open_tcp_listeners,
    open_tcp_stream,
)
from ._config import Config
from ._endpoint import Endpoint
from ._stream import UtcpStream
from ._transport import UdpTransport

__all__ = ["SocketListener", "SocketStream", "connect_tcp", "create_tcp_listener"]


def _require_trio() -> None:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        raise RuntimeError(
            "utcp.anyio needs anyio's trio backend: utcp runs on trio "
            "(use anyio.run(main, backend='trio'))"
        ) from None


def _udp_socket(stream_or_listener: UtcpStream | UtcpListener) -> socket.socket:
    transport = stream_or_listener.endpoint.transport
    sock = getattr(transport, "_sock", None)
    if not isinstance(sock, socket.socket):
        raise anyio.TypedAttributeLookupError("this endpoint has no UDP socket (simulated)")
    return sock


def _family(address: tuple[str, int]) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


class SocketStream(anyio.abc.SocketStream):
    """A utcp connection as an ``anyio.abc.SocketStream``."""

    def __init__(self, stream: UtcpStream) -> None:
        self.utcp_stream = stream

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            data = await self.utcp_stream.receive_some(max_bytes)
        except trio.ClosedResourceError:
            raise anyio.ClosedResourceError from None
        except trio.BrokenResourceError as exc:
            raise anyio.BrokenResourceError from (exc.__cause__ or exc)
        except trio.BusyResourceError:
            raise anyio.BusyResourceError("reading from") from None
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        try:
            await self.utcp_stream.send_all(item)
        except trio.ClosedResourceError:
            raise anyio.ClosedResourceError from None
        except trio.BrokenResourceError as exc:
            raise anyio.BrokenResourceError from (exc.__cause__ or exc)
        except trio.BusyResourceError:
            raise anyio.BusyResourceError("writing to") from None

    async def send_eof(self) -> None:
        try:
            await self.utcp_stream.send_eof()
        except trio.ClosedResourceError:
            raise anyio.ClosedResourceError from None

    async def aclose(self) -> None:
        await self.utcp_stream.aclose()

    @property
    def _raw_socket(self) -> socket.socket:
        return _udp_socket(self.utcp_stream)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        stream = self.utcp_stream
        local, remote = stream.getsockname(), stream.getpeername()
        return {
            anyio.abc.SocketAttribute.family: lambda: _family(local),
            anyio.abc.SocketAttribute.local_address: lambda: local,
            anyio.abc.SocketAttribute.local_port: lambda: local[1],
            anyio.abc.SocketAttribute.remote_address: lambda: remote,
            anyio.abc.SocketAttribute.remote_port: lambda: remote[1],
            anyio.abc.SocketAttribute.raw_socket: lambda: self._raw_socket,
        }


class SocketListener(anyio.abc.SocketListener):
    """A ``utcp.UtcpListener`` as an ``anyio.abc.SocketListener``."""

    def __init__(self, listener: UtcpListener) -> None:
        self.utcp_listener = listener

    async def accept(self) -> SocketStream:
        try:
            return SocketStream(await self.utcp_listener.accept())
        except trio.ClosedResourceError:
            raise anyio.ClosedResourceError from None
        except trio.BrokenResourceError as exc:
            raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        await self.utcp_listener.aclose()

    @property
    def _raw_socket(self) -> socket.socket:
        return _udp_socket(self.utcp_listener)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        local = self.utcp_listener.getsockname()
        return {
            anyio.abc.SocketAttribute.family: lambda: _family(local),
            anyio.abc.SocketAttribute.local_address: lambda: local,
            anyio.abc.SocketAttribute.local_port: lambda: local[1],
            anyio.abc.SocketAttribute.raw_socket: lambda: self._raw_socket,
        }


async def connect_tcp(
    remote_host: anyio.abc.IPAddressType,
    remote_port: int,
    *,
    local_host: anyio.abc.IPAddressType | None = None,
    local_port: int | None = None,
    tls: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    tls_standard_compatible: bool = True,
    tls_hostname: str | None = None,
    happy_eyeballs_delay: float = 0.25,
    config: Config | None = None,
) -> SocketStream | TLSStream:
    """``anyio.connect_tcp`` over utcp (same arguments, plus ``config``): a
    ``SocketStream``, or a ``TLSStream`` when ``tls``, ``ssl_context`` or
    ``tls_hostname`` asks for TLS. Raises OSError when every attempt failed."""
    _require_trio()
    host = str(remote_host)
    if local_port:
        if local_host is None:
            raise ValueError("local_port needs local_host")
        # A fixed local port: one attempt from an endpoint bound to it.
        local = (str(local_host), local_port)
        family = _family(local)
        infos = await trio.socket.getaddrinfo(host, remote_port, family, socket.SOCK_STREAM)
        remote = (str(infos[0][4][0]), int(infos[0][4][1]))
        endpoint = Endpoint(
            UdpTransport.bind(local, family),
            config=config or get_default_config(),
            auto_close=True,
        )
        try:
            utcp_stream = await connect_on(endpoint, remote, config=config)
        finally:
            endpoint.release()  # the stream holds it now
    else:
        utcp_stream = await open_tcp_stream(
            host,
            remote_port,
            happy_eyeballs_delay=happy_eyeballs_delay,
            local_address=None if local_host is None else str(local_host),
            config=config,
        )
    stream = SocketStream(utcp_stream)
    if not (tls or tls_hostname or ssl_context):
        return stream
    try:
        return await TLSStream.wrap(
            stream,
            server_side=False,
            hostname=tls_hostname or host,
            ssl_context=ssl_context,
            standard_compatible=tls_standard_compatible,
        )
    except BaseException:
        await anyio.aclose_forcefully(stream)
        raise


async def create_tcp_listener(
    *,
    local_host: anyio.abc.IPAddressType | None = None,
    local_port: int = 0,
    family: socket.AddressFamily = socket.AddressFamily.AF_UNSPEC,
    backlog: int = 65536,
    reuse_port: bool = False,
    config: Config | None = None,
) -> MultiListener[anyio.abc.SocketStream]:
    """``anyio.create_tcp_listener`` over utcp (same arguments, plus ``config``): one
    listener per local address, all on the same port (the first one's, when
    ``local_port`` is 0), as anyio does. Serve TLS with ``anyio.streams.tls.TLSListener``.
    ``reuse_port`` is refused: a UDP port shared between sockets would split connections."""
    _require_trio()
    if reuse_port:
        raise ValueError("utcp listeners cannot share a port (reuse_port)")
    host = str(local_host) if local_host is not None else None
    hosts: list[str | None] = [host]
    if host is None and family != socket.AF_UNSPEC:
        hosts = ["::" if family == socket.AF_INET6 else "0.0.0.0"]
    elif host is None:
        hosts = ["0.0.0.0", "::"]
    listeners: list[UtcpListener] = []
    try:
        port = local_port
        for address in hosts:
            try:
                opened = await open_tcp_listeners(
                    port, host=address, backlog=min(backlog, 65536), config=config
                )
            except OSError:
                if address == "::" and listeners:
                    continue  # no IPv6 on this machine: IPv4 alone, as anyio does
                raise
            listeners.extend(opened)
            port = listeners[0].getsockname()[1]
    except BaseException:
        for listener in listeners:
            await listener.aclose()
        raise
    return MultiListener([SocketListener(listener) for listener in listeners])
