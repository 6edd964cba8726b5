"""``UtcpStream``: a ``trio.abc.HalfCloseableStream`` over one utcp connection."""

from __future__ import annotations

import errno
import operator
import socket as _socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from ._fastopen import syn_held
from ._state import CAN_QUEUE, HANDSHAKING, SYNCHRONIZED, State

if TYPE_CHECKING:
    from ._connection import Connection
    from ._endpoint import Endpoint
    from ._socket import UtcpSocket

DEFAULT_RECEIVE_SIZE = 65536
# What trio.SocketStream sets on a kernel socket: TCP_NODELAY on and TCP_NOTSENT_LOWAT 16 KiB.
DEFAULT_NOTSENT_LOWAT = 1 << 14

# Option numbers as Linux defines them, for platforms whose socket module lacks some.
SOL_SOCKET = _socket.SOL_SOCKET
IPPROTO_TCP = _socket.IPPROTO_TCP
SO_KEEPALIVE = _socket.SO_KEEPALIVE
SO_SNDBUF = _socket.SO_SNDBUF
SO_RCVBUF = _socket.SO_RCVBUF
TCP_NODELAY = _socket.TCP_NODELAY
TCP_MAXSEG = getattr(_socket, "TCP_MAXSEG", 2)
TCP_KEEPIDLE = getattr(_socket, "TCP_KEEPIDLE", 4)
TCP_KEEPINTVL = getattr(_socket, "TCP_KEEPINTVL", 5)
TCP_KEEPCNT = getattr(_socket, "TCP_KEEPCNT", 6)
TCP_CONGESTION = getattr(_socket, "TCP_CONGESTION", 13)
TCP_USER_TIMEOUT = getattr(_socket, "TCP_USER_TIMEOUT", 18)
TCP_NOTSENT_LOWAT = getattr(_socket, "TCP_NOTSENT_LOWAT", 25)
TCP_FASTOPEN = getattr(_socket, "TCP_FASTOPEN", 23)
TCP_FASTOPEN_CONNECT = getattr(_socket, "TCP_FASTOPEN_CONNECT", 30)


@dataclass(frozen=True)
class Statistics:
    """A TCP_INFO-like snapshot of one connection (times in seconds, sizes in bytes)."""

    state: str
    srtt: float | None
    rttvar: float | None
    min_rtt: float | None
    rto: float
    cwnd: int
    ssthresh: int
    mss: int
    congestion_control: str
    bytes_sent: int
    bytes_retransmitted: int
    bytes_acked: int
    bytes_received: int
    segments_sent: int
    segments_received: int
    retransmits: int
    fast_retransmits: int
    rto_expiries: int
    lost: int
    sacked: int
    reordering: int
    bytes_in_flight: int
    peer_window: int
    receive_window: int
    delivery_rate: float
    checksum_drops: int
    malformed_drops: int
    drops: dict[str, int]
    fastopen: dict[str, int] = field(default_factory=dict)
    """RFC 7413 counters: cookies_sent, accepted, rejected (server side), syn_data_sent,
    syn_data_acked, fallbacks (client side); see ``ConnectionStats``."""


class UtcpStream(trio.abc.HalfCloseableStream):
    """A TCP byte stream over utcp; behaves like ``trio.SocketStream``.

    Errors follow trio's contract: ``trio.ClosedResourceError`` after you closed it (or,
    for sending, after ``send_eof``), ``trio.BrokenResourceError`` with the cause chained
    (ConnectionResetError, TimeoutError...) when the peer or the network broke it, and
    ``trio.BusyResourceError`` when two tasks send (or receive) at once.

    Like ``trio.SocketStream`` on a kernel socket it starts with Nagle off (TCP_NODELAY)
    and TCP_NOTSENT_LOWAT at 16 KiB, whatever ``Config.nodelay`` says, so code moved from
    kernel TCP keeps its latency; ``setsockopt`` changes either. ``socket`` is the stream
    as a ``utcp.UtcpSocket``, as ``trio.SocketStream.socket`` is.
    """

    __slots__ = (
        "_closed",
        "_detached_when_closed",
        "_eof_sent",
        "_lot",
        "_recv_busy",
        "_send_busy",
        "_socket",
        "_sockname",
        "conn",
        "endpoint",
        "notsent_lowat",
    )

    def __init__(self, endpoint: Endpoint, conn: Connection) -> None:
        self.endpoint = endpoint
        self.conn = conn
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self._eof_sent = False
        self._send_busy = False
        self._recv_busy = False
        self._detached_when_closed = False
        self._sockname: tuple[str, int] | None = None
        self._socket: UtcpSocket | None = None
        conn.nodelay = True
        self.notsent_lowat: int | None = DEFAULT_NOTSENT_LOWAT
        endpoint.streams[conn] = self
        endpoint.acquire()

    # ------------------------------------------------------------ endpoint callbacks

    def _on_events(self) -> None:
        """The endpoint's per-connection wake-up: the tasks waiting on this stream wake for
        the events the core emitted (readable data, EOF, send space, established, failed,
        closed); a connection the core could not even close in order is CLOSED without them."""
        conn = self.conn
        woke = False
        while conn.next_event() is not None:
            woke = True
        if woke or conn.state is State.CLOSED:
            self._lot.unpark_all()

    def _wake(self) -> None:
        self._lot.unpark_all()

    # ------------------------------------------------------------ helpers

    def _drive(self) -> None:
        self.endpoint.drive(conn=self.conn)

    def _send_error(self) -> BaseException | None:
        if self._closed or self._eof_sent:
            return trio.ClosedResourceError("this stream was closed for sending")
        if self.conn.error is not None:
            return broken_error(self.conn)
        if self.conn.state not in CAN_QUEUE:
            return broken_error(self.conn)
        if self.endpoint.closed:
            return trio.BrokenResourceError("the endpoint was closed")
        return None

    def _begin(self, attr: str, what: str) -> None:
        if getattr(self, attr):
            raise trio.BusyResourceError(f"another task is already {what} on this stream")
        setattr(self, attr, True)

    def _send_room(self) -> int:
        room = self.conn.send_space
        if self.notsent_lowat is not None:
            # The low-water mark bounds the unsent queue, not the segment size: like Linux,
            # which checks it per skb of up to a segment, a write may fill one segment.
            floor = max(self.notsent_lowat, self.conn.effective_mss)
            room = min(room, max(0, floor - self.conn.unsent))
        return room

    def _release_syn(self) -> None:
        """TCP_FASTOPEN_CONNECT: a SYN held back for the first data leaves now, without data,
        because the application receives or shuts down first."""
        if syn_held(self.conn):
            self.conn.send(b"")
            self._drive()

    async def _wait_established(self) -> None:
        """Park until the handshake finishes; raise the connection's error if it fails."""
        conn = self.conn
        while conn.state in HANDSHAKING and conn.error is None:
            await self._lot.park()
        if conn.error is not None:
            raise conn.error
        if conn.state not in SYNCHRONIZED:
            raise ConnectionAbortedError("connection closed during the handshake")

    # ------------------------------------------------------------ trio.abc.SendStream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._begin("_send_busy", "sending")
        try:
            # A checkpoint as in receive_some: cancellation first, then the data is queued
            # and its segments leave before this task yields (once: parking for room, or
            # shielded at the end), as trio's socket streams send before they yield.
            await trio.lowlevel.checkpoint_if_cancelled()
            yielded = False
            with memoryview(data) as view, view.cast("B") as remaining:
                while True:
                    error = self._send_error()
                    if error is not None:
                        if not yielded:
                            await trio.lowlevel.cancel_shielded_checkpoint()
                        raise error
                    taken = 0
                    if remaining:
                        taken = self.conn.send(remaining[: self._send_room()])
                        remaining = remaining[taken:]
                        if taken:
                            self._drive()
                    if not remaining:
                        break
                    yielded = True
                    if taken and self._send_room() > 0:
                        # The drive sent what we queued (TCP_NOTSENT_LOWAT keeps the unsent
                        # queue short): room again without an ACK, so no event would wake
                        # us. Yield to other tasks, then go on.
                        await trio.lowlevel.checkpoint()
                        continue
                    await self._lot.park()
            if not yielded:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._send_busy = False

    async def wait_send_all_might_not_block(self) -> None:
        self._begin("_send_busy", "sending")
        try:
            await trio.lowlevel.checkpoint()
            while True:
                error = self._send_error()
                if isinstance(error, trio.ClosedResourceError):
                    raise error
                if error is not None or self._send_room() > 0:
                    return
                await self._lot.park()
        finally:
            self._send_busy = False

    # ------------------------------------------------------------ trio.abc.ReceiveStream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)  # TypeError for floats, as trio's streams
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        self._begin("_recv_busy", "receiving")
        try:
            # A checkpoint, as trio's socket streams make it: cancellation is checked first,
            # and the task yields either by parking (when nothing is there yet: the common
            # case of a request-response exchange) or, if it never parked, once at the end
            # with the outcome already settled (shielded, so no data is lost). One trip
            # through the scheduler per call instead of two.
            await trio.lowlevel.checkpoint_if_cancelled()
            parked = False
            conn = self.conn
            while True:
                if self._closed:
                    outcome: bytes | BaseException = trio.ClosedResourceError(
                        "this stream was closed"
                    )
                elif conn.readable:
                    outcome = conn.receive(max_bytes or DEFAULT_RECEIVE_SIZE)
                    if conn.ack_pending:
                        self._drive()  # a window update is due (the only output it makes)
                elif conn.at_eof:
                    outcome = b""
                elif conn.error is not None or conn.state is State.CLOSED:
                    outcome = broken_error(conn)
                elif self.endpoint.closed:
                    outcome = trio.BrokenResourceError("the endpoint was closed")
                else:
                    self._release_syn()
                    await self._lot.park()
                    parked = True
                    continue
                break
            if not parked:
                await trio.lowlevel.cancel_shielded_checkpoint()
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        finally:
            self._recv_busy = False

    # ------------------------------------------------------------ half-close and close

    async def send_eof(self) -> None:
        self._begin("_send_busy", "sending")
        try:
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("this stream was closed")
            if self._eof_sent:
                return
            self._eof_sent = True
            if self.conn.error is None:
                self._release_syn()
                self.conn.shutdown(trio.current_time())
                self._drive()
        finally:
            self._send_busy = False

    async def aclose(self) -> None:
        self._close()
        await trio.lowlevel.checkpoint()

    def _close(self) -> None:
        """The synchronous part of ``aclose`` (``UtcpSocket.close`` is synchronous)."""
        if not self._closed:
            self._closed = True
            self._detached_when_closed = True
            if not self.endpoint.closed:
                self.conn.close(trio.current_time())
            self._lot.unpark_all()
            self.endpoint.release()
            self._drive()
            if self._socket is not None:
                self._socket.close()  # its descriptor, and the endpoint it may hold

    # ------------------------------------------------------------ socket-like extras

    @property
    def socket(self) -> UtcpSocket:
        """This stream as a ``trio.socket.SocketType`` (closing one closes the other)."""
        if self._socket is None:
            from ._socket import UtcpSocket

            self._socket = UtcpSocket._for_stream(self)
        return self._socket

    def getsockname(self) -> tuple[str, int]:
        """Our UDP address (the TCP port is ``conn.local_port``).

        On a wildcard-bound endpoint this is, like a kernel TCP socket's, the concrete
        address the routing table picks for the peer (found with a connected throwaway UDP
        socket, which sends nothing)."""
        ip, port = self.endpoint.local_address[:2]
        if ip in ("0.0.0.0", "::") and self._sockname is None:
            peer = self.conn.remote_address
            family = _socket.AF_INET6 if ":" in ip else _socket.AF_INET
            try:
                with _socket.socket(family, _socket.SOCK_DGRAM) as probe:
                    probe.connect(peer if peer is not None else ("127.0.0.1", 9))
                    ip = probe.getsockname()[0]
            except OSError:
                pass
            self._sockname = (ip, port)
        return self._sockname or (ip, port)

    def getpeername(self) -> tuple[str, int]:
        addr = self.conn.remote_address
        assert addr is not None
        return addr

    def setsockopt(self, level: int, option: int, value: int | bytes | str) -> None:
        """Set a socket option with the constants of the ``socket`` module (see README)."""
        conn = self.conn
        key = (level, option)
        if key == (IPPROTO_TCP, TCP_CONGESTION):
            name = value.decode() if isinstance(value, bytes) else str(value)
            try:
                conn.set_congestion_control(name.strip("\0"))
            except ValueError as exc:
                raise OSError(errno.ENOENT, str(exc)) from None  # as Linux answers
            return
        if not isinstance(value, int):
            raise TypeError("this option takes an integer")
        if key == (IPPROTO_TCP, TCP_NODELAY):
            conn.nodelay = bool(value)
        elif key == (SOL_SOCKET, SO_KEEPALIVE):
            conn.keepalive = bool(value)
        elif key == (IPPROTO_TCP, TCP_KEEPIDLE):
            conn.keepalive_idle = float(_positive(value))
        elif key == (IPPROTO_TCP, TCP_KEEPINTVL):
            conn.keepalive_interval = float(_positive(value))
        elif key == (IPPROTO_TCP, TCP_KEEPCNT):
            conn.keepalive_count = _positive(value)
        elif key == (IPPROTO_TCP, TCP_USER_TIMEOUT):
            conn.user_timeout = value / 1000 if value > 0 else None  # milliseconds, 0 = off
        elif key == (SOL_SOCKET, SO_SNDBUF):
            conn.set_send_buffer(_positive(value))
        elif key == (SOL_SOCKET, SO_RCVBUF):
            conn.set_receive_buffer(_positive(value))
        elif key == (IPPROTO_TCP, TCP_MAXSEG):
            conn.set_mss(value)
        elif key == (IPPROTO_TCP, TCP_NOTSENT_LOWAT):
            self.notsent_lowat = _positive(value)
        elif key in ((IPPROTO_TCP, TCP_FASTOPEN), (IPPROTO_TCP, TCP_FASTOPEN_CONNECT)):
            # As Linux: Fast Open is chosen before connect() or on a listener, not here.
            raise OSError(errno.EINVAL, "Fast Open is set before the connection is made")
        else:
            raise OSError(
                errno.ENOPROTOOPT, f"utcp does not support socket option {level}/{option}"
            )
        self._drive()
        self._lot.unpark_all()

    def getsockopt(self, level: int, option: int, buffersize: int = 0) -> int | bytes:
        conn = self.conn
        key = (level, option)
        values: dict[tuple[int, int], int] = {
            (IPPROTO_TCP, TCP_NODELAY): int(conn.nodelay),
            (SOL_SOCKET, SO_KEEPALIVE): int(conn.keepalive),
            (IPPROTO_TCP, TCP_KEEPIDLE): int(conn.keepalive_idle),
            (IPPROTO_TCP, TCP_KEEPINTVL): int(conn.keepalive_interval),
            (IPPROTO_TCP, TCP_KEEPCNT): conn.keepalive_count,
            (IPPROTO_TCP, TCP_USER_TIMEOUT): int((conn.user_timeout or 0) * 1000),
            (SOL_SOCKET, SO_SNDBUF): conn.sndbuf.capacity,
            (SOL_SOCKET, SO_RCVBUF): conn._rcv_wnd_capacity,
            (IPPROTO_TCP, TCP_MAXSEG): conn.effective_mss,
            (IPPROTO_TCP, TCP_NOTSENT_LOWAT): self.notsent_lowat or 0,
            (IPPROTO_TCP, TCP_FASTOPEN): conn.config.fastopen_queue,
            (IPPROTO_TCP, TCP_FASTOPEN_CONNECT): int(conn.config.fastopen_connect),
        }
        if key == (IPPROTO_TCP, TCP_CONGESTION):
            name = conn.cc.name.encode()
            return name.ljust(buffersize, b"\0") if buffersize else name
        if key not in values:
            raise OSError(
                errno.ENOPROTOOPT, f"utcp does not support socket option {level}/{option}"
            )
        return values[key]

    def statistics(self) -> Statistics:
        conn = self.conn
        st = conn.stats
        host = self.endpoint.host.stats
        return Statistics(
            state=str(conn.state),
            srtt=conn.rtt.srtt,
            rttvar=conn.rtt.rttvar,
            min_rtt=conn.rtt.min_rtt,
            rto=conn.rtt.current_rto(),
            cwnd=conn.cc.cwnd,
            ssthresh=conn.cc.ssthresh,
            mss=conn.effective_mss,
            congestion_control=conn.cc.name,
            bytes_sent=st.bytes_sent,
            bytes_retransmitted=st.bytes_retransmitted,
            bytes_acked=st.bytes_acked,
            bytes_received=st.bytes_received,
            segments_sent=st.segments_sent,
            segments_received=st.segments_received,
            retransmits=st.retransmits,
            fast_retransmits=st.fast_retransmits,
            rto_expiries=st.rto_expiries,
            lost=st.lost_segments,
            sacked=st.sacked_bytes,
            reordering=conn.scoreboard.reordered,
            bytes_in_flight=conn.bytes_in_flight,
            peer_window=conn.snd_wnd,
            receive_window=conn.rcv_wnd,
            delivery_rate=conn.delivery_rate,
            checksum_drops=host.checksum_drops,
            malformed_drops=host.malformed_drops,
            drops=dict(st.drops),
            fastopen={
                "cookies_sent": st.fastopen_cookies_sent,
                "accepted": st.fastopen_accepted,
                "rejected": st.fastopen_rejected,
                "syn_data_sent": st.fastopen_syn_data_sent,
                "syn_data_acked": st.fastopen_syn_data_acked,
                "fallbacks": st.fastopen_fallbacks,
            },
        )


def broken_error(conn: Connection) -> trio.BrokenResourceError:
    """The one mapping from a failed connection to trio's error: Broken, cause chained.
    (It lives here, not in _errors, because the sans-IO core must not import trio.)"""
    cause = conn.error
    if cause is None:
        cause = ConnectionAbortedError(f"connection is {conn.state}")
    err = trio.BrokenResourceError(f"utcp connection broken: {cause}")
    err.__cause__ = cause
    return err


def _positive(value: int) -> int:
    if value < 1:
        raise ValueError("option value must be positive")
    return value
