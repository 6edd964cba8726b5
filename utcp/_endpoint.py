"""The trio layer: one datagram transport, one sans-IO ``Host``, one I/O task.

The one drive step (STYLE.md rule 2): feed what arrived, fire due timers, flush what the
cores want to send, wake the tasks whose connections produced events, re-arm the timer.
Application calls drive synchronously right after they touch a connection, so the I/O task
only ever waits for the socket to become readable or for the next core deadline.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections import deque
from typing import TYPE_CHECKING

import trio

from ._config import Config
from ._connection import Connection
from ._host import Host
from ._pcap import PcapWriter
from ._state import State
from ._transport import RECV_BATCH, DatagramTransport, UdpTransport
from ._wire import Address

if TYPE_CHECKING:
    from ._stream import UtcpStream

log = logging.getLogger("utcp.endpoint")


class Endpoint:
    """Connections and listeners sharing one datagram socket.

    Created with ``await utcp.open_endpoint(...)`` (or implicitly by ``open_tcp_stream`` and
    ``open_tcp_listeners``). Its I/O runs in a trio system task from creation until
    ``aclose()``, or until nothing uses it any more and its last connection has closed
    (connections in TIME-WAIT keep answering until then).
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
        self.pcap = pcap
        self.closed = False
        self.streams: dict[Connection, UtcpStream] = {}
        self._auto_close = auto_close
        self._users = 1 if auto_close else 0
        self._accept_lots: dict[int, trio.lowlevel.ParkingLot] = {}
        self._wait_scope: trio.CancelScope | None = None
        self._unsent: deque[tuple[bytes, Address]] = deque()
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

    async def aclose(self) -> None:
        """Close now: live connections are aborted (RST), TIME-WAIT ones forgotten."""
        if not self.closed:
            now = trio.current_time()
            for conn in list(self.host.connections.values()):
                conn.abort(now)
            for port in list(self.host.listeners):
                self.host.unlisten(port, now)
            self._flush(now)
            self._dispatch()
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
                full = self._pump()
                if self.closed:
                    break
                if full:
                    await trio.lowlevel.checkpoint()  # a full batch: more may be waiting
                    continue
                with trio.CancelScope(deadline=self._deadline()) as scope:
                    self._wait_scope = scope
                    if self._unsent:
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
        now = trio.current_time()
        for conn in list(self.host.connections.values()):
            if conn.error is None:
                conn.error = ConnectionAbortedError(f"endpoint socket failed: {exc!r}")
            conn.abort(now)
        self._dispatch()

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
                    self.pcap.write(now, addr, self.local_address, data)
            self.host.receive_datagrams(batch, now)
        self.drive(now)
        return len(batch) == RECV_BATCH

    def drive(self, now: float | None = None) -> None:
        """Fire due timers, flush output, wake waiting tasks, re-arm the timer."""
        if self.closed or self._driving:
            return
        self._driving = True
        try:
            now = trio.current_time() if now is None else now
            deadline = self.host.next_timer()
            if deadline is not None and deadline <= now:
                self.host.handle_timer(now)
            self._flush(now)
            self._dispatch()
        finally:
            self._driving = False
        if self._wait_scope is not None:
            self._wait_scope.deadline = self._deadline()
        self._maybe_finish()

    def _deadline(self) -> float:
        deadline = self.host.next_timer()
        return math.inf if deadline is None else deadline

    def _flush(self, now: float) -> None:
        out = self._unsent
        out.extend(self.host.datagrams_to_send(now))
        send = self.transport.send
        pcap = self.pcap
        while out:
            data, addr = out[0]
            if not send(data, addr):
                self.send_blocked += 1
                return  # the I/O task waits for writability, then flushes again
            out.popleft()
            if pcap is not None:
                pcap.write(now, self.local_address, addr, data)

    def _dispatch(self) -> None:
        for conn, stream in list(self.streams.items()):
            if conn._events:
                stream._on_events()
            if conn.state is State.CLOSED and stream._detached_when_closed:
                del self.streams[conn]
        for port, lot in self._accept_lots.items():
            if self.host.accept_ready(port):
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
