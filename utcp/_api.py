"""The public functions, named and shaped like trio's own TCP helpers.

Switching an application from kernel TCP to utcp means writing ``utcp.open_tcp_stream``
for ``trio.open_tcp_stream``, ``utcp.serve_tcp`` for ``trio.serve_tcp`` and so on; each
also takes ``config=`` (a ``utcp.Config``) and ``endpoint=`` (share one UDP socket).
"""

from __future__ import annotations

import errno
import socket as _socket
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from ._config import Config
from ._endpoint import Endpoint
from ._stream import UtcpStream
from ._transport import UdpTransport

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup

if TYPE_CHECKING:
    from ._socket import UtcpSocket

_default_config = Config()

# trio's open_tcp_listeners caps the backlog the same way (socket.SOMAXCONN is usually 4096).
MAX_BACKLOG = 0xFFFF


def set_default_config(config: Config) -> None:
    """Make ``config`` the default for every later call that is not given one."""
    global _default_config
    if not isinstance(config, Config):
        raise TypeError("expected a utcp.Config")
    _default_config = config


def get_default_config() -> Config:
    return _default_config


class UtcpListener(trio.abc.Listener[UtcpStream]):
    """Accepts utcp connections on one endpoint and TCP port (like ``trio.SocketListener``)."""

    def __init__(self, endpoint: Endpoint, port: int) -> None:
        self.endpoint = endpoint
        self.port = port
        self._closed = False
        self._socket: UtcpSocket | None = None
        endpoint.acquire()

    @property
    def socket(self) -> UtcpSocket:
        """This listener as a listening ``utcp.UtcpSocket``, as ``trio.SocketListener.socket``
        (so ``listeners[0].socket.getsockname()`` and trio's testing helpers work)."""
        if self._socket is None:
            from ._socket import UtcpSocket

            self._socket = UtcpSocket._for_listener(self)
        return self._socket

    async def accept(self) -> UtcpStream:
        await trio.lowlevel.checkpoint()
        ep = self.endpoint
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this listener was closed")
            if ep.closed:
                raise trio.BrokenResourceError("the endpoint was closed")
            conn = ep.host.accept(self.port)
            if conn is not None:
                stream = UtcpStream(ep, conn)
                ep.drive()
                return stream
            await ep.accept_lot(self.port).park()

    async def aclose(self) -> None:
        self._close()
        await trio.lowlevel.checkpoint()

    def _close(self) -> None:
        """The synchronous part of ``aclose`` (``UtcpSocket.close`` is synchronous)."""
        if not self._closed:
            self._closed = True
            ep = self.endpoint
            if not ep.closed:
                ep.host.unlisten(self.port, trio.current_time())
                ep.accept_lot(self.port).unpark_all()
            ep.release()
            ep.drive()

    def getsockname(self) -> tuple[str, int]:
        return self.endpoint.local_address


async def listen_on(
    endpoint: Endpoint, port: int | None = None, *, backlog: int | None = None
) -> UtcpListener:
    """A listener on an existing endpoint (TCP port defaults to the endpoint's UDP port)."""
    await trio.lowlevel.checkpoint()
    backlog = MAX_BACKLOG if backlog is None else min(max(backlog, 1), MAX_BACKLOG)
    port = endpoint.host.listen(port, backlog=backlog)
    return UtcpListener(endpoint, port)


async def open_tcp_listeners(
    port: int,
    *,
    host: str | bytes | None = None,
    backlog: int | None = None,
    config: Config | None = None,
    reuse_port: bool = False,
) -> list[UtcpListener]:
    """Like ``trio.open_tcp_listeners``: one listener per local address ``host`` resolves to
    (all interfaces, IPv4 and IPv6, when None), each on its own UDP socket.

    ``reuse_port=True`` binds with ``SO_REUSEPORT`` so that several processes (one per core,
    say) serve one UDP port: the kernel hashes each peer's UDP 4-tuple to one socket, so
    every segment of a connection reaches the process that accepted it."""
    if not isinstance(port, int):
        raise TypeError(f"port must be an int not {port!r}")
    addrs = await trio.socket.getaddrinfo(
        host, port, type=_socket.SOCK_DGRAM, flags=_socket.AI_PASSIVE
    )
    listeners: list[UtcpListener] = []
    try:
        seen: set[tuple[int, str]] = set()
        for family, _type, _proto, _canon, sockaddr in addrs:
            ip = str(sockaddr[0])
            if (family, ip) in seen:
                continue
            seen.add((family, ip))
            try:
                transport = UdpTransport.bind((ip, int(sockaddr[1])), family, reuse_port=reuse_port)
            except OSError as exc:
                if exc.errno == errno.EAFNOSUPPORT:
                    continue  # e.g. IPv6 disabled on this machine, as trio does
                raise
            endpoint = Endpoint(transport, config=config or _default_config, auto_close=True)
            try:
                listeners.append(await listen_on(endpoint, backlog=backlog))
            finally:
                endpoint.release()  # the listener holds it now
    except BaseException:
        for lst in listeners:
            await lst.endpoint.aclose()
        raise
    if not listeners:
        raise OSError(f"could not bind to any of {addrs!r}")
    return listeners


async def serve_tcp(
    handler: Callable[[UtcpStream], Awaitable[Any]],
    port: int,
    *,
    host: str | bytes | None = None,
    backlog: int | None = None,
    handler_nursery: trio.Nursery | None = None,
    config: Config | None = None,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[list[UtcpListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Like ``trio.serve_tcp``: listen and run ``handler(stream)`` for each connection.
    Use with ``nursery.start`` to learn the listeners (and so the port) once bound.
    ``reuse_port``: see ``open_tcp_listeners``."""
    listeners = await open_tcp_listeners(
        port, host=host, backlog=backlog, config=config, reuse_port=reuse_port
    )
    await trio.serve_listeners(
        handler, listeners, handler_nursery=handler_nursery, task_status=task_status
    )


async def connect_on(
    endpoint: Endpoint,
    address: tuple[str, int],
    *,
    remote_port: int | None = None,
    config: Config | None = None,
) -> UtcpStream:
    """Open a connection through an existing endpoint; raises ConnectionRefusedError,
    TimeoutError (connect timeout) or OSError. Cancellation aborts just this connection.

    With ``Config.fastopen_connect`` and a Fast Open cookie cached for ``address`` this
    returns at once, like a Linux connect() with TCP_FASTOPEN_CONNECT: the SYN leaves with
    the first data sent (RFC 7413 4.2.2), and a failed open shows on the stream."""
    now = trio.current_time()
    cfg = config or endpoint.config
    defer = cfg.fastopen_connect and endpoint.host.fastopen_ready(address, remote_port, now)
    conn = endpoint.host.connect(address, now, remote_port=remote_port, config=config, defer=defer)
    stream = UtcpStream(endpoint, conn)
    endpoint.drive()
    if defer:
        return stream
    try:
        await stream._wait_established()
    except BaseException:
        conn.abort(trio.current_time())
        with trio.CancelScope(shield=True):
            await stream.aclose()
        raise
    return stream


async def open_tcp_stream(
    host: str | bytes,
    port: int,
    *,
    happy_eyeballs_delay: float | None = 0.25,
    local_address: str | None = None,
    config: Config | None = None,
    endpoint: Endpoint | None = None,
) -> UtcpStream:
    """Like ``trio.open_tcp_stream``: resolve ``host`` (IPv4 and IPv6), try the addresses
    with Happy Eyeballs (RFC 8305) staggering, and return the first connection made.

    Raises, never wrapped in an ExceptionGroup: ``ConnectionRefusedError`` (a RST or a
    port unreachable answered the SYN), ``TimeoutError`` (``Config.connect_timeout``),
    ``OSError`` with the errno of a network or host unreachable; with several addresses
    that all failed, one ``OSError`` (of the common type, if they agree) whose
    ``__cause__`` is an ExceptionGroup of the attempts, as trio does.

    Each attempt gets its own UDP socket (bound to ``local_address`` if given) unless
    ``endpoint`` is passed, in which case every attempt shares it.

    With ``Config.fastopen_connect`` (TCP Fast Open, RFC 7413) and a cookie cached for the
    server this returns before the handshake, and the first ``send_all`` rides in the SYN
    (see ``connect_on``); a refused or timed-out open then shows on the stream.
    """
    if not isinstance(port, int):
        raise TypeError(f"port must be an int not {port!r}")
    if happy_eyeballs_delay is None:
        happy_eyeballs_delay = 0.25
    cfg = config or (endpoint.config if endpoint else _default_config)
    targets = await _resolve(host, port, endpoint)

    async def attempt(family: int, addr: tuple[str, int]) -> UtcpStream:
        own: Endpoint | None = None
        try:
            ep = endpoint
            if ep is None:
                wildcard = "::" if family == _socket.AF_INET6 else "0.0.0.0"
                own = ep = Endpoint(
                    UdpTransport.bind((local_address or wildcard, 0), family),
                    config=cfg,
                    auto_close=True,
                )
            return await connect_on(ep, addr, config=cfg)
        finally:
            if own is not None:
                own.release()

    winner, errors = await race_attempts(targets, attempt, happy_eyeballs_delay)
    if winner is not None:
        return winner
    raise _combine(errors, host, port)


async def race_attempts(
    targets: list[tuple[int, tuple[str, int]]],
    attempt: Callable[[int, tuple[str, int]], Awaitable[UtcpStream]],
    delay: float,
) -> tuple[UtcpStream | None, list[OSError]]:
    """Happy Eyeballs (RFC 8305 5): start ``attempt(family, address)`` for each target in
    turn, the next one ``delay`` seconds later or as soon as the previous one failed; the
    first connection made wins and the others are cancelled (or closed, if they connected
    too). Returns the winner, or None and every attempt's OSError. Any other exception (a
    bug, a bad argument) is raised as itself after the attempts end, never wrapped in an
    ExceptionGroup, like the OSErrors."""
    winner: UtcpStream | None = None
    errors: list[OSError] = []
    bugs: list[Exception] = []

    async def run(family: int, address: tuple[str, int], failed: trio.Event) -> None:
        nonlocal winner
        try:
            stream = await attempt(family, address)
        except OSError as exc:
            errors.append(exc)
            failed.set()
            return
        except Exception as exc:
            bugs.append(exc)
            failed.set()
            return
        if winner is None:
            winner = stream
            nursery.cancel_scope.cancel()
        else:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        for family, address in targets:
            failed = trio.Event()
            nursery.start_soon(run, family, address, failed)
            with trio.move_on_after(delay):
                await failed.wait()
    if winner is None and bugs:
        raise bugs[0]
    return winner, errors


async def _resolve(
    host: str | bytes, port: int, endpoint: Endpoint | None
) -> list[tuple[int, tuple[str, int]]]:
    infos = await trio.socket.getaddrinfo(host, port, type=_socket.SOCK_STREAM)
    targets: list[tuple[int, tuple[str, int]]] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (_socket.AF_INET, _socket.AF_INET6):
            continue
        if endpoint is not None and (":" in endpoint.local_address[0]) != (
            family == _socket.AF_INET6
        ):
            continue
        target = (family, (str(sockaddr[0]), int(sockaddr[1])))
        if target not in targets:
            targets.append(target)
    if not targets:
        raise OSError(f"no usable address for {host!r}")
    return _interleave(targets)


def _interleave(targets: list[tuple[int, tuple[str, int]]]) -> list[tuple[int, tuple[str, int]]]:
    # RFC 8305 4: alternate address families, starting with the first one returned.
    first = targets[0][0]
    a = [t for t in targets if t[0] == first]
    b = [t for t in targets if t[0] != first]
    out: list[tuple[int, tuple[str, int]]] = []
    for i in range(max(len(a), len(b))):
        out.extend(x[i] for x in (a, b) if i < len(x))
    return out


def _combine(errors: list[OSError], host: str | bytes, port: int) -> OSError:
    if len(errors) == 1:
        return errors[0]
    message = f"all attempts to connect to {host!r}:{port} failed"
    combined: OSError
    # One kind of failure everywhere keeps its type, so `except ConnectionRefusedError` works.
    if all(isinstance(e, ConnectionRefusedError) for e in errors):
        combined = ConnectionRefusedError(message)
    elif all(isinstance(e, TimeoutError) for e in errors):
        combined = TimeoutError(message)
    else:
        combined = OSError(message)
    combined.__cause__ = ExceptionGroup(message, errors)
    return combined
