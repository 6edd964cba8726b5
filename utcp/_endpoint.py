"""The trio layer: one datagram transport, one sans-IO ``Host``, one I/O task.

The one drive step (STYLE.md rule 2): feed what arrived, fire due timers, flush what the
cores want to send, wake the tasks whose connections produced events, re-arm the timer.
Application calls drive synchronously right after they touch a connection, so the I/O task
only ever waits for the socket to become readable or for the next core deadline.

Cost per event: a drive step looks only at the connections something happened to. The host
keeps the timer heap and the set of touched connections; an application call names its
connection (``drive(conn=...)``), and after each flush the endpoint wakes the streams of the
connections the host lists as ``woken`` (found through the ``streams`` dict) and the accept
lots of the listeners whose queue grew. Only ``aclose`` (or a failure of the whole endpoint)
visits every connection.

How an endpoint fails, and what each failure takes down:
- A bug inside one connection's core (an exception from its input, timer or output
  processing): that connection alone is aborted, its stream raises ``BrokenResourceError``
  chained to ``ConnectionAbortedError`` chained to the exception, the peer gets a RST; the
  endpoint and its other connections go on (``Host``, "Failure isolation").
- The socket fails (``recv``/``send`` raise something other than the would-block and ICMP
  errors the transport absorbs), or the transport is closed under the endpoint: every
  connection fails with ``ConnectionAbortedError`` chained to that error, waiting streams
  raise ``BrokenResourceError``, listeners raise ``BrokenResourceError``, and the endpoint
  closes. The error is logged once.
- A bug in the endpoint or host outside any connection (demultiplexing, the timer heap): the
  same as a socket failure, since no single connection can be blamed.
- A full socket send buffer is no failure: the I/O task waits until it is writable.
- ``aclose()``: live connections are reset; their streams raise ``BrokenResourceError``
  ("the endpoint was closed"), closed ones ``ClosedResourceError``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import secrets
import time
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

import trio

from ._config import Config
from ._connection import Connection
from ._host import Host, HostStats
from ._pcap import PcapWriter
from ._state import State
from ._transport import RECV_BATCH, DatagramTransport, TransportStats, UdpTransport
from ._wire import Address

if TYPE_CHECKING:
    from ._stream import UtcpStream

log = logging.getLogger("utcp.endpoint")


@dataclass(frozen=True)
class EndpointStatistics:
    """Counters of one endpoint: its host (demultiplexing, drops, resets), its transport
    at the kernel boundary (UDP GSO/GRO in use, calls saved, socket buffers granted; None
    for a transport that keeps none) and how often a full socket buffer held a flush."""

    host: HostStats
    transport: TransportStats | None
    send_blocked: int


class Endpoint:
    """Connections and listeners sharing one datagram socket.

    Created with ``await utcp.open_endpoint(...)`` (or implicitly by ``open_tcp_stream`` and
    ``open_tcp_listeners``). Its I/O runs in a trio system task from creation until
    ``aclose()``, or until nothing uses it any more and its last connection has closed
    (connections in TIME-WAIT keep answering until then). ``async with`` closes it on exit.
    """

    def __init__(
        self,
        transport: DatagramTransport,
        *,
        config: Config | None = None,
        pcap: PcapWriter | None = None,
        isn_key: bytes | None = None,
        auto_close: bool = False,
    ) -> None:
        """With ``auto_close`` the endpoint belongs to the streams and listeners that use it:
        it starts with one hold for its creator (who ``release()``s it once its stream or
        listener is attached) and closes once unused and every connection has closed.
        Otherwise only ``aclose()`` closes it."""
        self.config = config or Config()
        self.transport = transport
        self.local_address: Address = transport.getsockname()
        self.host = Host(
            self.config, address=self.local_address, isn_key=isn_key or secrets.token_bytes(16)
        )
        # WIRE.md "Sizes": connections announce the MSS of the route toward their peer.
        self.host.path_mss = transport.path_mss
        self.pcap = pcap
        # pcap records carry wall-clock time: trio's clock plus this offset, taken once
        # at open so that the records keep trio's monotonic spacing.
        self._pcap_clock = time.time() - trio.current_time()
        self._send_errors_seen = 0
        self.closed = False
        self.streams: dict[Connection, UtcpStream] = {}
        self._auto_close = auto_close
        self._users = 1 if auto_close else 0
        self._accept_lots: dict[int, trio.lowlevel.ParkingLot] = {}
        self._wait_scope: trio.CancelScope | None = None
        self._unsent: list[tuple[bytes, Address]] = []
        self._done = trio.Event()
        self._driving = False
        self.send_blocked = 0
        trio.lowlevel.spawn_system_task(self._io_task, name=f"utcp endpoint {self.local_address}")

    # ------------------------------------------------------------ lifetime

    def acquire(self) -> None:
        self._users += 1

    def release(self) -> None:
        self._users -= 1
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if not self._auto_close or self._users > 0:
            return
        if not self.host.connections and not self.host.listeners:
            self._shutdown()

    def getsockname(self) -> Address:
        """The endpoint's UDP address (as bound: the port is the real one)."""
        return self.local_address

    def statistics(self) -> EndpointStatistics:
        """A snapshot of the endpoint's counters (``EndpointStatistics``)."""
        stats = getattr(self.transport, "stats", None)
        return EndpointStatistics(
            host=dataclasses.replace(self.host.stats, drops=dict(self.host.stats.drops)),
            transport=dataclasses.replace(stats) if isinstance(stats, TransportStats) else None,
            send_blocked=self.send_blocked,
        )

    async def __aenter__(self) -> Endpoint:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close now: live connections are aborted (RST), TIME-WAIT ones forgotten."""
        if not self.closed:
            now = trio.current_time()
            self.host.abort_all(now)
            self._flush(now)
            self._shutdown()
        await self._done.wait()

    def _shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.transport.close()
        if self.pcap is not None:
            self.pcap.close()
        if self._wait_scope is not None:
            self._wait_scope.cancel()
        for lot in self._accept_lots.values():
            lot.unpark_all()
        for stream in list(self.streams.values()):
            stream._wake()

    async def _io_task(self) -> None:
        # A system task must never raise (trio would crash the whole run): any failure of
        # the socket or a bug below fails this endpoint's connections instead.
        try:
            while not self.closed:
                # One cancel scope per timer expiry, not per wake-up: entering and leaving a
                # scope costs about as much as the rest of a 64-byte echo's wake-up. Its
                # deadline is the next timer (``drive`` moves it); when it passes, the wait
                # below is cancelled, the scope ends and the next one starts with a pump
                # that runs the timers.
                with trio.CancelScope(deadline=self._deadline()) as scope:
                    self._wait_scope = scope
                    while not self.closed:
                        full = self._pump()
                        if self.closed:
                            break
                        if full:
                            await trio.lowlevel.checkpoint()  # a full batch: more may wait
                        elif self._unsent:
                            await self.transport.wait_writable()
                        else:
                            await self.transport.wait_readable()
                self._wait_scope = None
        except trio.Cancelled:
            raise
        except Exception as exc:
            if not self.closed:
                log.exception("endpoint %s failed", self.local_address)
                self._fail_all(exc)
        finally:
            self._wait_scope = None
            self._shutdown()
            self._done.set()

    def _fail_all(self, exc: BaseException) -> None:
        def error() -> Exception:
            err = ConnectionAbortedError(f"the utcp endpoint failed: {exc!r}")
            err.__cause__ = exc
            return err

        host = self.host
        try:
            host.abort_all(trio.current_time(), error)
            host.datagrams_to_send(trio.current_time())  # the socket is gone: the RSTs too
            self._dispatch()
        except Exception:
            # The host itself is broken: _shutdown still wakes every task, which then finds
            # the endpoint closed.
            log.exception("endpoint %s: failing its connections failed", self.local_address)

    # ------------------------------------------------------------ the drive step

    def _pump(self) -> bool:
        """Drain the socket (one bounded batch), feed it, drive. True if the batch was full."""
        if self.closed:
            return False
        batch = self.transport.recv_batch(RECV_BATCH)
        now = trio.current_time()
        if batch:
            if self.pcap is not None:
                for data, addr in batch:
                    self.pcap.write(now + self._pcap_clock, addr, self.local_address, data)
            self.host.receive_datagrams(batch, now)
        self._kernel_errors(now)
        self.drive(now)
        return len(batch) >= RECV_BATCH

    def drive(self, now: float | None = None, *, conn: Connection | None = None) -> None:
        """Fire due timers, flush output, wake waiting tasks, re-arm the timer. After an
        application call on a connection, pass it as ``conn`` so its output is collected."""
        if conn is not None:
            self.host.touch(conn)
        if self.closed or self._driving:
            return
        self._driving = True
        try:
            now = trio.current_time() if now is None else now
            deadline = self.host.next_timer()
            if deadline is not None and deadline <= now:
                self.host.handle_timer(now)
            self._flush(now)
            if self.transport.send_errors != self._send_errors_seen:
                self._kernel_errors(now)  # what the sends just now drew
                self._flush(now)  # wakes the tasks of the connections they failed
        finally:
            self._driving = False
        scope = self._wait_scope
        if scope is not None:
            # Only ever earlier: a timer that moved later (in a request-response exchange
            # the delayed ACK and the RTO take turns several times per round trip) leaves
            # the I/O task a wake-up that finds nothing due and re-arms, at most once per
            # expiry, instead of a deadline re-registered in trio on every drive.
            deadline = self._deadline()
            if deadline < scope.deadline:
                scope.deadline = deadline
        self._maybe_finish()

    def _kernel_errors(self, now: float) -> None:
        """Hand what the kernel reported about our datagrams to their connections."""
        self._send_errors_seen = self.transport.send_errors
        for err in self.transport.recv_errors(RECV_BATCH):
            self.host.handle_kernel_error(err, now)

    def _deadline(self) -> float:
        deadline = self.host.next_timer()
        return math.inf if deadline is None else deadline

    def _flush(self, now: float) -> None:
        """Send what the touched connections have to send, then wake their tasks."""
        out = self._unsent
        out += self.host.datagrams_to_send(now)
        self._dispatch()
        if not out:
            return
        # In order, in as few calls as the transport can (runs to one peer: UDP GSO).
        sent = self.transport.send_batch(out)
        pcap = self.pcap
        if pcap is not None:
            for data, addr in out[:sent]:
                pcap.write(now + self._pcap_clock, self.local_address, addr, data)
        if sent < len(out):
            self.send_blocked += 1
            del out[:sent]  # the I/O task waits for writability, then flushes again
        else:
            out.clear()

    def _dispatch(self) -> None:
        """Wake the tasks of the connections the last flush looked at, and the accept lots
        of the listeners whose queue grew (never a walk over every stream)."""
        streams = self.streams
        for conn in self.host.woken:
            stream = streams.get(conn)
            if stream is None:
                continue
            stream._on_events()
            if conn.state is State.CLOSED and stream._detached_when_closed:
                del streams[conn]
        lots = self._accept_lots
        for port in self.host.accept_changed:
            lot = lots.get(port)
            if lot is not None:
                lot.unpark_all()

    # ------------------------------------------------------------ used by the API layer

    def accept_lot(self, port: int) -> trio.lowlevel.ParkingLot:
        return self._accept_lots.setdefault(port, trio.lowlevel.ParkingLot())


async def open_endpoint(
    local_address: tuple[str, int] = ("0.0.0.0", 0),
    *,
    config: Config | None = None,
    pcap: str | os.PathLike[str] | PcapWriter | None = None,
) -> Endpoint:
    """Bind a UDP socket and start an endpoint on it. ``pcap`` records its traffic (WIRE.md's
    synthetic-IP framing), given a path or a ``PcapWriter``."""
    await trio.lowlevel.checkpoint()
    transport = UdpTransport.bind(local_address)
    writer = PcapWriter.open(pcap) if isinstance(pcap, (str, os.PathLike)) else pcap
    return Endpoint(transport, config=config, pcap=writer)
