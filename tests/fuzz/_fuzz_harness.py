"""One fuzz target shared by hypothesis, atheris and the corpus replay: the receive path.

``ReceiveTarget`` is a server ``Host`` (listening, with one ESTABLISHED connection that has
data in flight both ways) and a client ``Host`` over a quiet simulated network, both with
fixed ISNs so a stored input replays bit for bit. ``run_input(data)`` splits fuzz input into
datagrams (``split``) and feeds them to the server host, then checks the invariants of
``ReceiveTarget.check``.

Input format (also the corpus file format, tests/fuzz/corpus/): a sequence of records, each
``mode`` (1 byte), ``length`` (1 byte) and ``length`` bytes of datagram. ``mode`` bit 0
rebases the datagram's sequence and acknowledgment numbers, read as signed 32-bit offsets,
onto the connection's RCV.NXT and SND.UNA, and zeroes the checksum ("not computed"), so
mutations reach the state machine instead of dying at the checksum; bits 1-2 choose the
source address: the connection's peer, the peer's IP with another UDP port, or two strangers.
"""

from __future__ import annotations

import struct

from utcp._config import Config
from utcp._connection import Connection
from utcp._host import AMPLIFICATION_FACTOR, Host
from utcp._seq import MASK
from utcp._wire import Address, DecodeError, decode_untrusted
from utcp.testing import CLIENT_ADDR, SERVER_ADDR, HostPair

CLIENT_ISS = 2**32 - 1000
SERVER_ISS = 2**32 - 3000
BACKLOG = 8
SOURCES: tuple[Address, ...] = (
    CLIENT_ADDR,
    (CLIENT_ADDR[0], CLIENT_ADDR[1] + 1),
    ("203.0.113.7", 40000),
    ("2001:db8::7", 5353),
)
MAX_RECORDS = 32
TIMER_ROUNDS = 4  # retransmissions (SYN-ACKs to strangers among them) run too


def split(data: bytes) -> list[tuple[int, bytes]]:
    """The (mode, datagram) records of a fuzz input; a short last record is kept short."""
    records: list[tuple[int, bytes]] = []
    pos = 0
    while pos + 2 <= len(data) and len(records) < MAX_RECORDS:
        mode, length = data[pos], data[pos + 1]
        records.append((mode, data[pos + 2 : pos + 2 + length]))
        pos += 2 + length
    return records


def join(records: list[tuple[int, bytes]]) -> bytes:
    """The inverse of ``split`` (datagrams of at most 255 bytes)."""
    return b"".join(bytes((mode, len(d))) + d for mode, d in records)


class ReceiveTarget:
    """A server host with one established connection, fed hostile datagrams."""

    def __init__(self) -> None:
        config = Config(receive_buffer_size=16384, send_buffer_size=16384, challenge_ack_limit=5)
        self.pair = HostPair(seed=15, config=config, client_iss=CLIENT_ISS, server_iss=SERVER_ISS)
        self.host: Host = self.pair.server
        self.host.listeners[SERVER_ADDR[1]].backlog = BACKLOG
        client, server = self.pair.connect()
        self.conn: Connection = server
        # Data both ways, half of it still unacknowledged when the fuzz input arrives.
        client.send(bytes(3000))
        server.send(bytes(5000))
        self.pair.net.run_for(0.001)
        self.now = self.pair.now + 0.001
        self.sent_to: dict[Address, int] = {}
        self.received_from: dict[Address, int] = {}

    def feed(self, records: list[tuple[int, bytes]]) -> None:
        """Hand the records to the host as one batch, then drain, and run a timer."""
        host, conn = self.host, self.conn
        batch: list[tuple[bytes, Address]] = []
        for mode, datagram in records:
            if mode & 1 and len(datagram) >= 20:
                seq_off, ack_off = struct.unpack_from("!ii", datagram, 4)
                fixed = bytearray(datagram)
                struct.pack_into(
                    "!II",
                    fixed,
                    4,
                    (conn.rcv_nxt + seq_off) & MASK,
                    (conn.snd_una + ack_off) & MASK,
                )
                fixed[16:18] = b"\0\0"
                datagram = bytes(fixed)
            source = SOURCES[(mode >> 1) & 3]
            batch.append((datagram, source))
            self.received_from[source] = self.received_from.get(source, 0) + len(datagram)
        before = host.stats.datagrams_received
        host.receive_datagrams(batch, self.now)
        assert host.stats.datagrams_received == before + len(batch)
        self.drain()
        for _ in range(TIMER_ROUNDS):
            deadline = host.next_timer()
            if deadline is None:
                break
            self.now = max(self.now, deadline)
            host.handle_timer(self.now)
            self.drain()

    def drain(self) -> None:
        for datagram, dest in self.host.datagrams_to_send(self.now):
            # Everything we send is well formed.
            decode_untrusted(datagram)
            self.sent_to[dest] = self.sent_to.get(dest, 0) + len(datagram)

    def check(self) -> None:
        host = self.host
        # The core never raised: a failure would have aborted a connection and been counted.
        assert host.stats.connection_failures == 0
        # Half-open connections stay within the backlog; the established one may be gone.
        assert len(host.connections) <= BACKLOG + 1
        deadline = host.next_timer()
        assert deadline is None or deadline >= 0.0
        for conn in host.connections.values():
            assert conn.bytes_in_flight >= 0 and conn.rcv_wnd >= 0
        # docs/HARDENING.md "Reflection and amplification": an address that never completed
        # a handshake gets at most AMPLIFICATION_FACTOR times the bytes it sent us.
        for source in SOURCES[1:]:
            sent, received = self.sent_to.get(source, 0), self.received_from.get(source, 0)
            assert sent <= AMPLIFICATION_FACTOR * received, (source, sent, received)


def run_input(data: bytes) -> ReceiveTarget:
    """Feed one fuzz input to a fresh target and check it; raises only AssertionError."""
    target = ReceiveTarget()
    target.feed(split(data))
    target.check()
    return target


def decode_only(data: bytes) -> None:
    """The decoder alone: ``DecodeError`` with a known reason, or a consistent segment."""
    try:
        seg = decode_untrusted(data)
    except DecodeError as exc:
        assert exc.reason in ("short", "offset", "option", "checksum"), exc.reason
        return
    assert 0 <= len(seg.payload) <= len(data) - 20
    assert len(seg.sack_blocks) <= 4
    assert seg.wscale is None or 0 <= seg.wscale <= 14
