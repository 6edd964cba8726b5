"""``UtcpSocket``: a trio socket object whose TCP is utcp, and the factory that installs it.

``trio.socket.set_custom_socket_factory`` makes every ``trio.socket.socket()`` of one
``trio.run`` come from a factory. ``trio.open_tcp_stream``, ``trio.open_tcp_listeners``,
``trio.serve_tcp``, ``trio.SocketStream``/``SocketListener`` and anyio's ``connect_tcp`` on
trio only ever reach TCP through such socket objects, so with ``utcp.install()`` they run over
utcp unchanged. A ``UtcpSocket`` is a view of the trio layer's objects: once listening it
wraps a ``UtcpListener``, once connected a ``UtcpStream`` (and ``UtcpStream.socket`` /
``UtcpListener.socket`` give the same view back).

Each socket maps to UDP the way WIRE.md does: a bound or listening socket owns a UDP socket
on the same address and port; a connecting one owns a fresh UDP socket (or the one ``bind``
made); accepted connections share their listener's. Errors carry the errno a kernel TCP socket
would report (ECONNREFUSED, ETIMEDOUT, ECONNRESET, EADDRINUSE from the UDP bind, ENOTCONN,
EPIPE, and EBADF once closed, which trio turns into ``ClosedResourceError``).

``fileno()``: each open socket holds its own real descriptor, ``/dev/null`` opened read-only
with close-on-exec, closed with the socket (then ``fileno()`` is -1). Because the kernel
allocated it, no file, pipe or socket of the process can have the same number while the
``UtcpSocket`` is open, so code that keys tables by descriptor never confuses the two; code
that hands it to ``select`` sees it always ready (``/dev/null``), never another object's
readiness. Use ``is_readable()``/``wait_writable()`` for real readiness.
"""

from __future__ import annotations

import errno
import operator
import os
import socket as _stdsocket
import struct
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, overload

import trio

from . import _congestion
from ._api import MAX_BACKLOG, UtcpListener, connect_on, get_default_config
from ._config import Config
from ._endpoint import Endpoint
from ._pcap import PcapWriter
from ._state import CAN_QUEUE, State
from ._stream import (
    IPPROTO_TCP,
    SO_KEEPALIVE,
    SO_RCVBUF,
    SO_SNDBUF,
    SOL_SOCKET,
    TCP_CONGESTION,
    TCP_FASTOPEN,
    TCP_FASTOPEN_CONNECT,
    TCP_KEEPCNT,
    TCP_KEEPIDLE,
    TCP_KEEPINTVL,
    TCP_MAXSEG,
    TCP_NODELAY,
    TCP_NOTSENT_LOWAT,
    TCP_USER_TIMEOUT,
    Statistics,
    UtcpStream,
)
from ._transport import DatagramTransport, UdpTransport

if TYPE_CHECKING:
    from typing_extensions import Buffer

AF_INET = _stdsocket.AF_INET
AF_INET6 = _stdsocket.AF_INET6
SOCK_STREAM = _stdsocket.SOCK_STREAM
IPPROTO_IPV6 = _stdsocket.IPPROTO_IPV6
IPV6_V6ONLY = _stdsocket.IPV6_V6ONLY
SO_REUSEADDR = _stdsocket.SO_REUSEADDR
SO_ACCEPTCONN = getattr(_stdsocket, "SO_ACCEPTCONN", 30)
SO_ERROR = _stdsocket.SO_ERROR
SO_TYPE = _stdsocket.SO_TYPE
SO_DOMAIN = getattr(_stdsocket, "SO_DOMAIN", 39)
SO_PROTOCOL = getattr(_stdsocket, "SO_PROTOCOL", 38)
# Flags Linux lets callers or-in to the socket type; they change nothing for utcp.
_TYPE_FLAGS = getattr(_stdsocket, "SOCK_NONBLOCK", 0) | getattr(_stdsocket, "SOCK_CLOEXEC", 0)

Address = tuple[str, int]
TransportBinder = Callable[[Address, int], DatagramTransport]

# The options a connection carries (see UtcpStream.setsockopt); before the connection exists
# they are kept and become its Config, so SO_RCVBUF or TCP_MAXSEG set before connect() or
# listen() shape the SYN as they would on a kernel socket.
_CONNECTION_OPTIONS = frozenset(
    {
        (IPPROTO_TCP, TCP_NODELAY),
        (SOL_SOCKET, SO_KEEPALIVE),
        (IPPROTO_TCP, TCP_KEEPIDLE),
        (IPPROTO_TCP, TCP_KEEPINTVL),
        (IPPROTO_TCP, TCP_KEEPCNT),
        (IPPROTO_TCP, TCP_USER_TIMEOUT),
        (SOL_SOCKET, SO_SNDBUF),
        (SOL_SOCKET, SO_RCVBUF),
        (IPPROTO_TCP, TCP_MAXSEG),
        (IPPROTO_TCP, TCP_CONGESTION),
        (IPPROTO_TCP, TCP_NOTSENT_LOWAT),
        (IPPROTO_TCP, TCP_FASTOPEN),
        (IPPROTO_TCP, TCP_FASTOPEN_CONNECT),
    }
)
MSG_FASTOPEN = getattr(_stdsocket, "MSG_FASTOPEN", 0x20000000)
# Options an accepted connection does not take from its listener after listen(): the
# listener's own Fast Open settings, and TCP_NOTSENT_LOWAT (a stream's own default).
_NOT_INHERITED = frozenset(
    {
        (IPPROTO_TCP, TCP_NOTSENT_LOWAT),
        (IPPROTO_TCP, TCP_FASTOPEN),
        (IPPROTO_TCP, TCP_FASTOPEN_CONNECT),
    }
)

_ERRNO_OF: tuple[tuple[type[BaseException], int], ...] = (
    (ConnectionRefusedError, errno.ECONNREFUSED),
    (ConnectionResetError, errno.ECONNRESET),
    (ConnectionAbortedError, errno.ECONNABORTED),
    (BrokenPipeError, errno.EPIPE),
    (TimeoutError, errno.ETIMEDOUT),
)


def os_error(exc: BaseException) -> OSError:
    """``exc`` as the OSError a kernel socket raises: same class, ``errno`` set, cause kept."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc
    code = next((c for cls, c in _ERRNO_OF if isinstance(exc, cls)), errno.EIO)
    err = OSError(code, f"{os.strerror(code)} ({exc})")  # picks the subclass for the errno
    err.__cause__ = exc
    return err


def _error(code: int, detail: str = "") -> OSError:
    return OSError(code, os.strerror(code) + (f" ({detail})" if detail else ""))


def _unsupported(level: int, option: int) -> OSError:
    return _error(errno.ENOPROTOOPT, f"utcp does not support socket option {level}/{option}")


class SocketFactory(trio.abc.SocketFactory):
    """A ``trio.abc.SocketFactory`` whose IPv4/IPv6 SOCK_STREAM sockets are ``UtcpSocket``s.

    Every other kind (UDP, Unix sockets, raw) is a real trio socket, so a program's own
    datagrams keep working, and utcp's UDP sockets are stdlib sockets that never come here.

    ``config`` is the Config of its connections (default: ``utcp.get_default_config()`` at
    each socket's creation); ``pcap`` records every endpoint's datagrams into one writer
    (give it an open file: endpoints flush it but never close it); ``bind_transport(address,
    family)`` replaces the UDP bind (``utcp.testing`` binds on a simulated network).
    Connections' statistics are kept for ``connection_statistics()`` (the last
    ``keep_statistics`` closed ones and every open one).
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        pcap: PcapWriter | None = None,
        bind_transport: TransportBinder | None = None,
        keep_statistics: int = 1000,
    ) -> None:
        self.config = config
        self.pcap = pcap
        self.bind_transport: TransportBinder = bind_transport or UdpTransport.bind
        self._closed_stats: deque[tuple[Address, Statistics]] = deque(maxlen=keep_statistics)
        self._open: weakref.WeakSet[UtcpSocket] = weakref.WeakSet()

    def socket(
        self,
        family: _stdsocket.AddressFamily | int = AF_INET,
        type: _stdsocket.SocketKind | int = SOCK_STREAM,
        proto: int = 0,
    ) -> trio.socket.SocketType:
        tcp = type & ~_TYPE_FLAGS == SOCK_STREAM and proto in (0, _stdsocket.IPPROTO_TCP)
        if family in (AF_INET, AF_INET6) and tcp:
            return UtcpSocket(family, type, proto, factory=self)
        return trio.socket.from_stdlib_socket(_stdsocket.socket(family, type, proto))

    def connection_statistics(self) -> list[tuple[Address, Statistics]]:
        """(peer address, statistics) of recent closed connections, then the open ones."""
        live = [(s.getpeername()[:2], s.statistics()) for s in list(self._open) if s._stream]
        return [*self._closed_stats, *live]

    def _opened(self, sock: UtcpSocket) -> None:
        self._open.add(sock)

    def _forget(self, sock: UtcpSocket, peer: Address, stats: Statistics) -> None:
        self._open.discard(sock)
        self._closed_stats.append((peer, stats))


def socket(
    family: _stdsocket.AddressFamily | int = AF_INET,
    type: _stdsocket.SocketKind | int = SOCK_STREAM,
    proto: int = 0,
    *,
    config: Config | None = None,
) -> UtcpSocket:
    """A new ``UtcpSocket`` (like ``trio.socket.socket`` for IPv4/IPv6 TCP)."""
    return UtcpSocket(family, type, proto, config=config)


def install(factory: SocketFactory | None = None) -> trio.abc.SocketFactory | None:
    """Inside ``trio.run``: make every later ``trio.socket.socket()`` of this run come from
    ``factory`` (a new ``SocketFactory`` by default). Returns the previous factory."""
    return trio.socket.set_custom_socket_factory(factory or SocketFactory())


def uninstall(previous: trio.abc.SocketFactory | None = None) -> None:
    """Put ``previous`` (what ``install`` returned; default: trio's own sockets) back."""
    trio.socket.set_custom_socket_factory(previous)


@contextmanager
def installed(factory: SocketFactory | None = None) -> Iterator[SocketFactory]:
    """``with utcp.installed(): ...``: ``install`` for the block, then the previous factory."""
    factory = factory or SocketFactory()
    previous = install(factory)
    try:
        yield factory
    finally:
        uninstall(previous)


class UtcpSocket(trio.socket.SocketType):
    """A ``trio.socket.SocketType`` for TCP over utcp (see the module docstring).

    It supports what ``trio.SocketStream``, ``trio.SocketListener`` and trio's and anyio's
    open/serve helpers use: ``bind``, ``listen``, ``accept``, ``connect`` (cancellable
    mid-handshake: the attempt is aborted and the socket closed, as trio does), ``send``,
    ``recv``, ``recv_into``, ``shutdown``, ``close``, ``setsockopt``/``getsockopt``,
    ``getsockname``/``getpeername``, ``is_readable``, ``wait_writable``, ``fileno``. Not
    supported: ``recv``/``send`` flags other than ``MSG_NOSIGNAL``, ``recvmsg``, ``sendto``
    other than Fast Open's ``sendto(data, MSG_FASTOPEN, address)``,
    ``dup``/``detach``, and ``IPV6_V6ONLY`` off (utcp's IPv6 sockets are IPv6-only).
    ``SO_REUSEADDR`` is accepted and has no effect (a listening UDP port stays exclusive).
    """

    def __init__(
        self,
        family: _stdsocket.AddressFamily | int = AF_INET,
        type: _stdsocket.SocketKind | int = SOCK_STREAM,
        proto: int = 0,
        *,
        config: Config | None = None,
        factory: SocketFactory | None = None,
    ) -> None:
        super().__init__()
        if family not in (AF_INET, AF_INET6):
            raise _error(errno.EAFNOSUPPORT, "utcp sockets are AF_INET or AF_INET6")
        if type & ~_TYPE_FLAGS != SOCK_STREAM:
            raise _error(errno.EPROTONOSUPPORT, "utcp sockets are SOCK_STREAM")
        self._family = _stdsocket.AddressFamily(family)
        self._proto = proto
        self._factory = factory
        self._config = config or (factory and factory.config) or get_default_config()
        self._options: dict[tuple[int, int], int | bytes] = {}
        self._endpoint: Endpoint | None = None  # the one bind/listen/connect made (we hold it)
        self._listener: UtcpListener | None = None
        self._listen_options: dict[tuple[int, int], int | bytes] = {}
        self._stream: UtcpStream | None = None
        self._connecting = False
        self._closed = False
        self._did_shutdown_SHUT_WR = False
        self._shut_rd = False
        self._error_reported = False
        self._waiting_to_read = False
        self._waiting_to_write = False
        self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._release_fd = weakref.finalize(self, os.close, self._fd)

    @classmethod
    def _for_stream(
        cls,
        stream: UtcpStream,
        *,
        factory: SocketFactory | None = None,
        options: dict[tuple[int, int], int | bytes] | None = None,
    ) -> UtcpSocket:
        family = AF_INET6 if ":" in stream.endpoint.local_address[0] else AF_INET
        sock = cls(family, config=stream.conn.config, factory=factory)
        sock._stream = stream
        stream._socket = sock
        if options is not None:
            sock._raw_defaults(options)
        if factory is not None:
            factory._opened(sock)
        return sock

    @classmethod
    def _for_listener(cls, listener: UtcpListener) -> UtcpSocket:
        family = AF_INET6 if ":" in listener.endpoint.local_address[0] else AF_INET
        sock = cls(family, config=listener.endpoint.config)
        sock._listener = listener
        listener._socket = sock
        return sock

    # ------------------------------------------------------------ what it is

    @property
    def family(self) -> _stdsocket.AddressFamily:
        return self._family

    @property
    def type(self) -> _stdsocket.SocketKind:
        return _stdsocket.SocketKind.SOCK_STREAM

    @property
    def proto(self) -> int:
        return self._proto

    @property
    def did_shutdown_SHUT_WR(self) -> bool:
        return self._did_shutdown_SHUT_WR

    @property
    def endpoint(self) -> Endpoint | None:
        """The utcp endpoint (UDP socket) under this socket, once bound or connected."""
        if self._stream is not None:
            return self._stream.endpoint
        if self._listener is not None:
            return self._listener.endpoint
        return self._endpoint

    @property
    def _sock(self) -> _stdsocket.socket:
        # anyio's trio backend reads ``_sock`` for its ``raw_socket`` attribute (and the
        # family and local address it derives from it): there it is the UDP socket.
        ep = self.endpoint
        sock = getattr(ep.transport, "_sock", None) if ep is not None else None
        if not isinstance(sock, _stdsocket.socket):
            raise AttributeError("this utcp socket has no UDP socket yet")
        return sock

    @property
    def stream(self) -> UtcpStream | None:
        """The ``UtcpStream`` of a connected socket."""
        return self._stream

    def fileno(self) -> int:
        return -1 if self._closed else self._fd

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd}"
        try:
            where = f" laddr={self.getsockname()}"
            if self._stream is not None:
                where += f" raddr={self.getpeername()}"
        except OSError:
            where = ""
        return f"<utcp.UtcpSocket {state} family={self._family.name}{where}>"

    def __enter__(self) -> UtcpSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def dup(self) -> trio.socket.SocketType:
        raise _error(errno.EOPNOTSUPP, "a utcp socket cannot be duplicated")

    def detach(self) -> int:
        raise _error(errno.EOPNOTSUPP, "a utcp socket has no kernel socket to detach")

    # ------------------------------------------------------------ addresses

    def _wildcard(self) -> Address:
        return ("::" if self._family == AF_INET6 else "0.0.0.0", 0)

    def _format(self, address: Address) -> Any:
        if self._family == AF_INET6:
            return (address[0], address[1], 0, 0)
        return (address[0], address[1])

    def getsockname(self) -> Any:
        self._check_open()
        if self._stream is not None:
            return self._format(self._stream.getsockname())
        ep = self.endpoint
        return self._format(ep.local_address if ep is not None else self._wildcard())

    def getpeername(self) -> Any:
        self._check_open()
        if self._stream is None:
            raise _error(errno.ENOTCONN)
        return self._format(self._stream.getpeername())

    async def _resolve(self, address: Any, *, local: bool) -> Address:
        if not isinstance(address, tuple) or not 2 <= len(address) <= (
            4 if self._family == AF_INET6 else 2
        ):
            raise ValueError(f"address should be a (host, port) tuple, not {address!r}")
        host, port = address[0], address[1]
        if host in ("", None):
            if not local:
                host = "::1" if self._family == AF_INET6 else "127.0.0.1"
            else:
                host = self._wildcard()[0]
        if isinstance(host, bytes):
            host = host.decode("ascii")
        if isinstance(port, int):
            try:
                _stdsocket.inet_pton(self._family, host)
            except (OSError, TypeError):
                pass
            else:
                return (host, port)
        flags = _stdsocket.AI_PASSIVE if local else 0
        infos = await trio.socket.getaddrinfo(host, port, self._family, SOCK_STREAM, 0, flags)
        sockaddr = infos[0][4]
        return (str(sockaddr[0]), int(sockaddr[1]))

    # ------------------------------------------------------------ bind, listen, accept

    def _check_open(self) -> None:
        if self._closed:
            raise _error(errno.EBADF)

    def _bind_now(self, address: Address) -> Endpoint:
        factory = self._factory
        binder = factory.bind_transport if factory is not None else UdpTransport.bind
        transport = binder(address, self._family)
        self._endpoint = Endpoint(
            transport,
            config=self._config,
            pcap=factory.pcap if factory is not None else None,
            auto_close=True,
        )
        return self._endpoint

    async def bind(self, address: Any) -> None:
        self._check_open()
        resolved = await self._resolve(address, local=True)
        await trio.lowlevel.checkpoint()
        self._check_open()
        if self.endpoint is not None or self._connecting:
            raise _error(errno.EINVAL, "the socket is already bound")
        self._bind_now(resolved)

    def listen(self, backlog: int = min(_stdsocket.SOMAXCONN, 128)) -> None:
        self._check_open()
        if self._stream is not None or self._connecting:
            raise _error(errno.EINVAL, "the socket is connected")
        if self._listener is not None:
            return
        ep = self._endpoint or self._bind_now(self._wildcard())
        backlog = min(max(int(backlog), 1), MAX_BACKLOG)
        port = ep.host.listen(None, backlog=backlog, config=self._connection_config())
        self._listener = UtcpListener(ep, port)
        self._listener._socket = self
        self._listen_options = dict(self._options)

    async def accept(self) -> tuple[UtcpSocket, Any]:
        self._check_open()
        listener = self._listener
        if listener is None:
            await trio.lowlevel.checkpoint()
            raise _error(errno.EINVAL, "the socket is not listening")
        try:
            stream = await listener.accept()
        except trio.ClosedResourceError:
            raise _error(errno.EBADF) from None
        except trio.BrokenResourceError as exc:
            raise _error(errno.EIO, "the listening UDP endpoint failed") from exc
        # Options set on the listener after listen() reach its later connections too, as
        # accepted kernel sockets inherit the listener's current options.
        later = {k: v for k, v in self._options.items() if self._listen_options.get(k) != v}
        for (level, option), value in later.items():
            if (level, option) not in _NOT_INHERITED:
                stream.setsockopt(level, option, value)
        sock = UtcpSocket._for_stream(stream, factory=self._factory, options=self._options)
        return sock, sock.getpeername()

    # ------------------------------------------------------------ connect

    async def connect(self, address: Any) -> None:
        self._check_open()
        if self._stream is not None:
            raise _error(errno.EISCONN)
        if self._listener is not None or self._connecting:
            raise _error(errno.EALREADY if self._connecting else errno.EINVAL)
        self._connecting = True
        try:
            remote = await self._resolve(address, local=False)
            ep = self._endpoint or self._bind_now(self._wildcard())
            stream = await connect_on(ep, remote, config=self._connection_config())
        except trio.Cancelled:
            # As trio does: a connect cut short leaves the socket closed (connect_on has
            # already aborted the half-open connection).
            self.close()
            raise
        except OSError as exc:
            error = os_error(exc)
            if error is exc:
                raise
            raise error from exc
        finally:
            self._connecting = False
        if self._closed:
            stream._close()
            raise _error(errno.EBADF)
        self._stream = stream
        stream._socket = self
        self._raw_defaults(self._options)
        if self._factory is not None:
            self._factory._opened(self)

    def _raw_defaults(self, options: dict[tuple[int, int], int | bytes]) -> None:
        # UtcpStream starts with trio.SocketStream's defaults; a bare socket has a kernel
        # socket's (Nagle per the Config, no TCP_NOTSENT_LOWAT) unless options say otherwise.
        stream = self._stream
        assert stream is not None
        stream.conn.nodelay = bool(
            options.get((IPPROTO_TCP, TCP_NODELAY), stream.conn.config.nodelay)
        )
        lowat = options.get((IPPROTO_TCP, TCP_NOTSENT_LOWAT))
        stream.notsent_lowat = lowat if isinstance(lowat, int) and lowat > 0 else None

    # ------------------------------------------------------------ data

    async def _park(self, stream: UtcpStream, waiting: str) -> None:
        # As with trio's sockets (one waiter per fd and direction), a second task waiting to
        # read, or to write, is a BusyResourceError rather than a silent race.
        if getattr(self, waiting):
            what = "reading from" if waiting == "_waiting_to_read" else "writing to"
            raise trio.BusyResourceError(f"another task is already {what} this socket")
        setattr(self, waiting, True)
        try:
            await stream._lot.park()
        finally:
            setattr(self, waiting, False)

    def _connection_error(self) -> OSError | None:
        stream = self._stream
        assert stream is not None
        conn = stream.conn
        if conn.error is not None:
            return os_error(conn.error)
        if stream.endpoint.closed and conn.state is not State.CLOSED:
            return _error(errno.ECONNABORTED, "the UDP endpoint was closed")
        return None

    async def send(self, data: Buffer, flags: int = 0, /) -> int:
        if flags & ~getattr(_stdsocket, "MSG_NOSIGNAL", 0):
            raise _error(errno.EOPNOTSUPP, "utcp sockets take no send flags")
        await trio.lowlevel.checkpoint()
        with memoryview(data) as view, view.cast("B") as octets:
            while True:
                self._check_open()
                stream = self._stream
                if stream is None or self._did_shutdown_SHUT_WR:
                    raise _error(errno.EPIPE)
                error = self._connection_error()
                if error is not None:
                    raise error
                conn = stream.conn
                # Before the handshake ends only with Fast Open (RFC 7413 4.2.2): after a
                # TCP_FASTOPEN_CONNECT connect (the data rides in the SYN), or on a
                # connection accepted in SYN-RECEIVED.
                if conn.state not in CAN_QUEUE:
                    raise _error(errno.EPIPE)
                if not octets:
                    return 0
                room = stream._send_room()
                if room > 0:
                    taken = conn.send(octets[:room])
                    stream._drive()
                    return taken
                await self._park(stream, "_waiting_to_write")

    @overload
    async def sendto(self, data: Buffer, address: tuple[object, ...] | str | Buffer, /) -> int: ...

    @overload
    async def sendto(
        self, data: Buffer, flags: int, address: tuple[object, ...] | str | Buffer, /
    ) -> int: ...

    async def sendto(self, data: Buffer, *args: Any) -> int:
        """Only as Linux's Fast Open client uses it: ``sendto(data, MSG_FASTOPEN, address)``
        on an unconnected socket connects with Fast Open (RFC 7413) and sends ``data``,
        in the SYN when a cookie is cached."""
        if len(args) != 2 or args[0] != MSG_FASTOPEN:
            await trio.lowlevel.checkpoint()
            raise _error(errno.EOPNOTSUPP, "utcp sockets take sendto only with MSG_FASTOPEN")
        self.setsockopt(IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
        await self.connect(args[1])
        return await self.send(data)

    async def recv(self, buflen: int, flags: int = 0, /) -> bytes:
        if flags:
            raise _error(errno.EOPNOTSUPP, "utcp sockets take no recv flags")
        buflen = operator.index(buflen)  # TypeError for a float, as socket.recv
        if buflen < 0:
            raise ValueError("negative buffersize in recv")
        await trio.lowlevel.checkpoint()
        while True:
            self._check_open()
            stream = self._stream
            if stream is None:
                raise _error(errno.ENOTCONN)
            conn = stream.conn
            if self._shut_rd or buflen == 0:
                return b""
            if conn.readable:
                data = conn.receive(buflen)
                if conn.ack_pending:
                    stream._drive()  # a window update is due
                return data
            if conn.at_eof:
                return b""
            error = self._connection_error()
            if error is not None:
                raise error
            if conn.state is State.CLOSED:
                raise _error(errno.ECONNABORTED)
            await self._park(stream, "_waiting_to_read")

    async def recv_into(self, buffer: Buffer, nbytes: int = 0, flags: int = 0) -> int:
        with memoryview(buffer) as view, view.cast("B") as target:
            data = await self.recv(nbytes or len(target), flags)
            target[: len(data)] = data
        return len(data)

    def shutdown(self, flag: int) -> None:
        self._check_open()
        stream = self._stream
        if stream is None:
            raise _error(errno.ENOTCONN)
        if flag not in (_stdsocket.SHUT_RD, _stdsocket.SHUT_WR, _stdsocket.SHUT_RDWR):
            raise _error(errno.EINVAL)
        if flag != _stdsocket.SHUT_WR:
            self._shut_rd = True
        if flag != _stdsocket.SHUT_RD:
            self._did_shutdown_SHUT_WR = True
            if not stream._eof_sent:
                stream._eof_sent = True
                if stream.conn.error is None:
                    # RFC 9293 3.10.4: CLOSE of the sending direction, FIN after queued data.
                    stream.conn.shutdown(trio.current_time())
                    stream._drive()
        stream._lot.unpark_all()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        stream, listener, own = self._stream, self._listener, self._endpoint
        if stream is not None:
            if self._factory is not None:
                self._factory._forget(self, stream.getpeername()[:2], stream.statistics())
            stream._close()
        if listener is not None:
            listener._close()
        if own is not None:
            own.release()
        self._release_fd()

    # ------------------------------------------------------------ readiness

    def is_readable(self) -> bool:
        self._check_open()
        if self._listener is not None:
            return self._listener.endpoint.host.accept_ready(self._listener.port)
        stream = self._stream
        if stream is None:
            return False
        conn = stream.conn
        return bool(
            self._shut_rd
            or conn.readable
            or conn.at_eof
            or conn.error is not None
            or conn.state is State.CLOSED
        )

    async def wait_writable(self) -> None:
        await trio.lowlevel.checkpoint()
        while True:
            self._check_open()
            stream = self._stream
            if stream is None or self._did_shutdown_SHUT_WR:
                return
            if self._connection_error() is not None:
                return
            if stream.conn.state not in (State.ESTABLISHED, State.CLOSE_WAIT):
                return
            if stream._send_room() > 0:
                return
            await self._park(stream, "_waiting_to_write")

    # ------------------------------------------------------------ options

    def _connection_config(self) -> Config:
        """The Config of a connection made from this socket: its options applied."""
        changes: dict[str, object] = {}
        for (level, option), value in self._options.items():
            key = (level, option)
            if key == (IPPROTO_TCP, TCP_CONGESTION):
                name = value.decode() if isinstance(value, bytes) else str(value)
                changes["congestion_control"] = name.strip("\0")
                continue
            assert isinstance(value, int)
            if key == (IPPROTO_TCP, TCP_NODELAY):
                changes["nodelay"] = bool(value)
            elif key == (SOL_SOCKET, SO_KEEPALIVE):
                changes["keepalive"] = bool(value)
            elif key == (IPPROTO_TCP, TCP_KEEPIDLE):
                changes["keepalive_idle"] = float(value)
            elif key == (IPPROTO_TCP, TCP_KEEPINTVL):
                changes["keepalive_interval"] = float(value)
            elif key == (IPPROTO_TCP, TCP_KEEPCNT):
                changes["keepalive_count"] = value
            elif key == (IPPROTO_TCP, TCP_USER_TIMEOUT):
                changes["user_timeout"] = value / 1000 if value > 0 else None
            elif key == (SOL_SOCKET, SO_SNDBUF):
                changes["send_buffer_size"] = value
            elif key == (SOL_SOCKET, SO_RCVBUF):
                changes["receive_buffer_size"] = value
            elif key == (IPPROTO_TCP, TCP_MAXSEG):
                changes["mss"] = value
            elif key == (IPPROTO_TCP, TCP_FASTOPEN):
                changes["fastopen_queue"] = value
            elif key == (IPPROTO_TCP, TCP_FASTOPEN_CONNECT):
                changes["fastopen_connect"] = bool(value)
        return self._config.replace(**changes) if changes else self._config

    def setsockopt(
        self, level: int, optname: int, value: int | Buffer | None, optlen: int | None = None
    ) -> None:
        self._check_open()
        if value is None or optlen is not None:
            raise _error(errno.EINVAL, "utcp options take a value, not an optlen")
        key = (level, optname)
        stored: int | bytes = value if isinstance(value, int) else bytes(value)
        if key == (SOL_SOCKET, SO_REUSEADDR):
            self._options[key] = int(bool(stored))
            return
        if key == (IPPROTO_IPV6, IPV6_V6ONLY) and self._family == AF_INET6:
            if not stored:
                raise _error(errno.ENOPROTOOPT, "utcp's IPv6 sockets are IPv6-only")
            return
        if key not in _CONNECTION_OPTIONS:
            raise _error(
                errno.ENOPROTOOPT, f"utcp does not support socket option {level}/{optname}"
            )
        if self._stream is not None:
            self._stream.setsockopt(level, optname, stored)
            return
        previous = self._options.get(key)
        self._options[key] = stored
        try:
            if key == (IPPROTO_TCP, TCP_CONGESTION):
                name = stored.decode() if isinstance(stored, bytes) else str(stored)
                if name.strip("\0") not in _congestion.available():
                    raise _error(errno.ENOENT, f"no congestion control {name!r}")
            elif not isinstance(stored, int):
                raise TypeError("this option takes an integer")
            elif key == (IPPROTO_TCP, TCP_NOTSENT_LOWAT):
                if stored < 1:
                    raise ValueError("TCP_NOTSENT_LOWAT must be positive")
            else:
                self._connection_config()
            if key == (IPPROTO_TCP, TCP_FASTOPEN) and self._listener is not None:
                # TCP_FASTOPEN on a listening socket takes effect at once, as in Linux.
                listener = self._listener
                listener.endpoint.host.set_fastopen_queue(listener.port, int(stored))
        except (ValueError, OSError, TypeError):
            if previous is None:
                del self._options[key]
            else:
                self._options[key] = previous
            raise

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        self._check_open()
        value = self._getsockopt(level, optname)
        if buflen and isinstance(value, int):
            return struct.pack("i", value)[:buflen]
        if isinstance(value, bytes) and buflen:
            return value.ljust(buflen, b"\0")[:buflen]
        return value

    def _getsockopt(self, level: int, optname: int) -> int | bytes:
        key = (level, optname)
        if level == SOL_SOCKET:
            if optname == SO_ACCEPTCONN:
                return int(self._listener is not None)
            if optname == SO_TYPE:
                return SOCK_STREAM
            if optname == SO_DOMAIN:
                return int(self._family)
            if optname == SO_PROTOCOL:
                return _stdsocket.IPPROTO_TCP
            if optname == SO_ERROR:
                return self._pending_errno()
            if optname == SO_REUSEADDR:
                return int(self._options.get(key, 0))
        if key == (IPPROTO_IPV6, IPV6_V6ONLY) and self._family == AF_INET6:
            return 1
        if key not in _CONNECTION_OPTIONS:
            raise _error(
                errno.ENOPROTOOPT, f"utcp does not support socket option {level}/{optname}"
            )
        if self._stream is not None:
            return self._stream.getsockopt(level, optname)
        if key in self._options:
            return self._options[key]
        cfg = self._config
        defaults: dict[tuple[int, int], int | bytes] = {
            (IPPROTO_TCP, TCP_NODELAY): int(cfg.nodelay),
            (SOL_SOCKET, SO_KEEPALIVE): int(cfg.keepalive),
            (IPPROTO_TCP, TCP_KEEPIDLE): int(cfg.keepalive_idle),
            (IPPROTO_TCP, TCP_KEEPINTVL): int(cfg.keepalive_interval),
            (IPPROTO_TCP, TCP_KEEPCNT): cfg.keepalive_count,
            (IPPROTO_TCP, TCP_USER_TIMEOUT): int((cfg.user_timeout or 0) * 1000),
            (SOL_SOCKET, SO_SNDBUF): cfg.send_buffer_size,
            (SOL_SOCKET, SO_RCVBUF): cfg.receive_buffer_size,
            (IPPROTO_TCP, TCP_MAXSEG): cfg.local_mss(self._family == AF_INET6),
            (IPPROTO_TCP, TCP_CONGESTION): cfg.congestion_control.encode(),
            (IPPROTO_TCP, TCP_NOTSENT_LOWAT): 0,
            (IPPROTO_TCP, TCP_FASTOPEN): cfg.fastopen_queue,
            (IPPROTO_TCP, TCP_FASTOPEN_CONNECT): int(cfg.fastopen_connect),
        }
        return defaults[key]

    def _pending_errno(self) -> int:
        # SO_ERROR reports a connection's error once, then 0, as on a kernel socket.
        stream = self._stream
        if stream is None or stream.conn.error is None or self._error_reported:
            return 0
        self._error_reported = True
        code = os_error(stream.conn.error).errno
        return code if code is not None else errno.EIO

    # ------------------------------------------------------------ utcp extras

    def statistics(self) -> Statistics:
        """The connection's ``UtcpStream.statistics()``."""
        if self._stream is None:
            raise _error(errno.ENOTCONN)
        return self._stream.statistics()
