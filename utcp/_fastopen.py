"""TCP Fast Open (RFC 7413): the first request rides on the SYN. No I/O, like the core.

Reading list: RFC 7413 4.1 (the cookie: option, server and client handling, negative
caching), 4.2 (the exchange), 5.1 (bounding pending Fast Open connections), 5.2 (what a
server may send before the handshake ends); Linux's tcp_fastopen.c for the choices the RFC
leaves open (which SYN-ACKs carry a cookie, what a retransmitted SYN carries).

Theory of operation. Everything is opt-in (``Config.fastopen_connect`` for clients,
``Config.fastopen_queue`` for listeners, like Linux's ``TCP_FASTOPEN_CONNECT`` and
``TCP_FASTOPEN``). The host gives each connection that may use Fast Open a session in
``Connection.fastopen``: a :class:`ClientSession` (its host's cookie cache and the server's
key) or a :class:`ServerSession` (its listener's :class:`ListenerFastOpen` and the client's
identity). The connection calls four hooks, and only these touch its TCB:

- :func:`syn_out` on every SYN or SYN-ACK it builds: the client's first SYN gets the cookie
  (or a cookie request) and the data queued so far; a server's SYN-ACK gets a cookie when
  one is owed;
- :func:`synack_in` when a SYN-ACK reaches SYN-SENT: cache the cookie, take the data the
  server acknowledged, and rewind SND.NXT over the rest so it is sent again as ordinary data;
- :func:`syn_in` when a SYN reaches LISTEN: check the cookie, and with a valid one take the
  SYN's data at once, which lets the host hand the connection to ``accept`` in SYN-RECEIVED;
- :func:`sends_early`: such a connection sends data before the handshake ends.

Cookies are ``COOKIE_LEN`` bytes of a keyed BLAKE2s of the client's IP address. The key is
derived from the host's secret and the current key period, so rotation needs no stored
state: a cookie minted in one period is accepted in that period and the next.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._config import DEFAULT_PEER_MSS
from ._events import DataReceived
from ._state import State
from ._wire import Address, Segment

if TYPE_CHECKING:
    from ._connection import Connection

# RFC 7413 4.1.1: 4 to 16 bytes; 8 like Linux (64 bits against guessing, 10 option bytes).
COOKIE_LEN = 8
# RFC 7413 4.1.2: the server changes its secret now and then; the previous key stays valid
# for one more period, so a cookie lives between one and two periods.
KEY_PERIOD = 3600.0
# RFC 7413 4.1.3: cookies cached per server, bounded (least recently used goes first).
CACHE_SIZE = 1024
# RFC 7413 4.1.3.1: after a negative response Fast Open towards that server is off for
# NEGATIVE_BASE * 2**(n-1) seconds after the n-th in a row (Linux: 2**n minutes), at most
# NEGATIVE_MAX.
NEGATIVE_BASE = 60.0
NEGATIVE_MAX = 48 * 3600.0
# Option bytes a SYN may carry, kept free of SYN data so the datagram fits the MSS (MSS 4,
# timestamps 12, window scale 4, cookie 10 + 2 padding; Linux reserves all 40).
SYN_OPTION_SPACE = 40

ServerKey = tuple[Address, int]  # (the server's UDP address, its TCP port)


class CookieKeys:
    """A server's cookie minting and checking (RFC 7413 4.1.2)."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        self._secret = hashlib.blake2s(b"utcp fast open", key=secret[:32]).digest()

    def _mac(self, client: bytes, period: int) -> bytes:
        key = hashlib.blake2s(period.to_bytes(8, "big", signed=True), key=self._secret).digest()
        return hashlib.blake2s(client, key=key, digest_size=COOKIE_LEN).digest()

    def cookie(self, client: bytes, now: float) -> bytes:
        """The cookie for ``client`` (an IP address) minted at ``now``."""
        return self._mac(client, int(now // KEY_PERIOD))

    def check(self, cookie: bytes, client: bytes, now: float) -> int:
        """0: invalid; 1: valid with the current key; 2: valid with the previous one."""
        period = int(now // KEY_PERIOD)
        if cookie == self._mac(client, period):
            return 1
        return 2 if cookie == self._mac(client, period - 1) else 0


class ListenerFastOpen:
    """A listener's Fast Open state: its keys, its queue bound and its pending children."""

    __slots__ = ("keys", "pending", "queue_len")

    def __init__(self, keys: CookieKeys, queue_len: int) -> None:
        self.keys = keys
        # RFC 7413 5.1: at most this many connections that took data from a SYN may wait in
        # SYN-RECEIVED (Linux's TCP_FASTOPEN queue length).
        self.queue_len = queue_len
        self.pending: set[Connection] = set()


class ServerSession:
    """One passive connection's Fast Open state."""

    __slots__ = ("accepted", "client", "cookie_out", "listener", "refuse")

    def __init__(self, listener: ListenerFastOpen, client: bytes, *, refuse: bool) -> None:
        self.listener = listener
        self.client = client
        self.refuse = refuse  # the listener's queues are too full (RFC 7413 5.1)
        self.cookie_out: bytes | None = None  # to send in our SYN-ACK
        self.accepted = False  # the SYN's cookie was valid: data taken, accept early


@dataclass(slots=True)
class CacheEntry:
    cookie: bytes | None = None
    mss: int = DEFAULT_PEER_MSS
    losses: int = 0  # negative responses in a row (RFC 7413 4.1.3.1)
    off_until: float = 0.0


class ClientCache:
    """Cookies per server, with the server's MSS and negative responses (RFC 7413 4.1.3)."""

    __slots__ = ("_entries", "size")

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[ServerKey, CacheEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def get(self, key: ServerKey) -> CacheEntry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def usable(self, key: ServerKey, now: float) -> CacheEntry | None:
        """The entry to use for a new connection (one with no cookie asks for one), or None
        while negative responses keep Fast Open off towards this server."""
        entry = self.get(key)
        if entry is None:
            return CacheEntry()
        return entry if now >= entry.off_until else None

    def _entry(self, key: ServerKey) -> CacheEntry:
        entry = self.get(key)
        if entry is None:
            entry = self._entries[key] = CacheEntry()
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return entry

    def store(self, key: ServerKey, cookie: bytes | None, mss: int | None) -> None:
        """A positive answer: remember the cookie (if any) and the server's MSS."""
        entry = self._entry(key)
        if cookie:
            entry.cookie = cookie
        if mss is not None:
            entry.mss = mss
        entry.losses = 0
        entry.off_until = 0.0

    def negative(self, key: ServerKey, now: float) -> None:
        """RFC 7413 4.1.3.1: a lost Fast Open SYN or an answer without the cookie: Fast Open
        to this server stays off for a while, doubling with each one in a row."""
        entry = self._entry(key)
        entry.losses += 1
        entry.off_until = now + min(NEGATIVE_BASE * 2 ** min(entry.losses - 1, 20), NEGATIVE_MAX)


_SHARED_CACHE = ClientCache()


def shared_cache() -> ClientCache:
    """The process-wide cache that hosts use unless given one (like Linux's per-namespace
    TCP metrics): every ``open_tcp_stream`` has its own UDP socket and host."""
    return _SHARED_CACHE


class ClientSession:
    """One active connection's Fast Open state."""

    __slots__ = ("cache", "data", "key", "option_sent", "requested")

    def __init__(self, cache: ClientCache, key: ServerKey) -> None:
        self.cache = cache
        self.key = key
        self.option_sent = False  # our first SYN carried the option (cookie or request)
        self.requested = False  # ...as a cookie request
        self.data = 0  # bytes our first SYN carried


FastOpenSession = ClientSession | ServerSession


def syn_out(conn: Connection, seg: Segment, now: float) -> Segment:
    """Called with each SYN or SYN-ACK ``conn`` sends; returns it with Fast Open added."""
    fo = conn.fastopen
    if fo is None:
        return seg
    if isinstance(fo, ServerSession):
        # RFC 7413 4.2.1 / 4.2.2: the cookie goes back in the SYN-ACK (every one, so a lost
        # SYN-ACK does not lose the cookie; Linux only puts it in the first).
        if fo.cookie_out is not None:
            seg.fastopen_cookie = fo.cookie_out
            conn.stats.fastopen_cookies_sent += 1
        return seg
    if conn.state is State.SYN_RECEIVED:
        # Simultaneous open (RFC 9293 3.5): RFC 7413 does not define it, so Fast Open is off
        # (as in Linux): the peer's SYN-SENT did not take our SYN's data, which is sent again
        # as ordinary data once the handshake is done.
        conn._snd_nxt = 1
        return seg
    if conn._syn_sends > 1:
        # RFC 7413 4.1.3.1 and Linux: the SYN with data (or the option) is sent once; a
        # retransmitted SYN carries neither, so a middlebox that drops them cannot stall
        # the connection. The loss is a negative response, once per connection.
        if fo.option_sent and conn._syn_sends == 2 and conn._syn_retries:
            fo.cache.negative(fo.key, now)
            conn.stats.fastopen_fallbacks += 1
        return seg
    entry = fo.cache.usable(fo.key, now)
    if entry is None:
        return seg  # RFC 7413 4.1.3.1: Fast Open is off towards this server for now
    fo.option_sent = True
    if entry.cookie is None:
        seg.fastopen_cookie = b""  # RFC 7413 4.2.1: a cookie request
        fo.requested = True
        return seg
    # RFC 7413 4.2.2: the cookie and as much queued data as fits in the server's MSS.
    seg.fastopen_cookie = entry.cookie
    room = min(entry.mss, conn.local_mss) - SYN_OPTION_SPACE
    n = max(0, min(conn.sndbuf.end - 1, room))
    if n:
        seg.payload = conn.sndbuf.get(1, 1 + n)
        conn._snd_nxt = 1 + n
        fo.data = n
        conn.stats.fastopen_syn_data_sent += 1
        conn.stats.bytes_sent += n
    return seg


def synack_in(conn: Connection, seg: Segment, now: float) -> int:
    """A SYN-ACK reached SYN-SENT (its ACK is acceptable). Returns the offset that becomes
    SND.UNA and SND.NXT: data the SYN-ACK did not acknowledge is sent again as new data."""
    ack_off = conn._ack_offset(seg.ack)
    fo = conn.fastopen
    if not isinstance(fo, ClientSession) or not fo.option_sent:
        return ack_off
    acked = ack_off - 1
    cookie = seg.fastopen_cookie
    if cookie or (fo.data and acked == fo.data):
        # RFC 7413 4.1.3: cache the cookie with the server's MSS (RFC 9293 3.7.1 default).
        fo.cache.store(fo.key, cookie, seg.mss if seg.mss is not None else DEFAULT_PEER_MSS)
    elif (fo.data or fo.requested) and not conn._syn_retries:
        # RFC 7413 4.1.3.1: answered without the cookie and without taking the data (or
        # without the cookie asked for): the server has Fast Open off, or a middlebox
        # strips the option. (A valid cookie without data draws no cookie either, from
        # Linux: that is no answer either way.)
        fo.cache.negative(fo.key, now)
        conn.stats.fastopen_fallbacks += 1
    if fo.data:
        if acked == fo.data:
            conn.stats.fastopen_syn_data_acked += 1
        elif not conn._syn_retries:
            conn.stats.fastopen_fallbacks += 1  # (a retransmitted SYN counted already)
        # RFC 7413 4.2.2: what the SYN-ACK did not acknowledge goes again after the
        # handshake, as ordinary data.
        conn.stats.bytes_sent -= fo.data - acked
    if acked:
        conn.stats.bytes_acked += conn.sndbuf.acknowledge(ack_off)
    return ack_off


def syn_in(conn: Connection, seg: Segment, now: float) -> None:
    """A SYN took ``conn`` from LISTEN to SYN-RECEIVED: answer its Fast Open option."""
    fo = conn.fastopen
    if not isinstance(fo, ServerSession) or seg.fastopen_cookie is None:
        # RFC 7413 4.2.2: without the option, data in a SYN is not taken (RFC 9293 3.10.7.2)
        # and no cookie is sent (Linux, since 2015).
        return
    lst = fo.listener
    if fo.refuse:
        # RFC 7413 5.1: too many pending Fast Open connections, or the SYN queue is under
        # pressure (the host decides): a plain handshake without a cookie, as in Linux.
        return
    valid = lst.keys.check(seg.fastopen_cookie, fo.client, now) if seg.fastopen_cookie else 0
    if not valid:
        # RFC 7413 4.2.1 (a request) / 4.2.2 (an invalid cookie): a fresh cookie in the
        # SYN-ACK; the data is treated as not received: we acknowledge the SYN only.
        fo.cookie_out = lst.keys.cookie(fo.client, now)
        if seg.fastopen_cookie:
            conn.stats.fastopen_rejected += 1
        return
    if valid == 2:
        fo.cookie_out = lst.keys.cookie(fo.client, now)  # minted with the previous key
    # RFC 7413 4.2.2: a valid cookie: the data goes to the application at once and the
    # SYN-ACK acknowledges it; the connection is accepted in SYN-RECEIVED and may send
    # data before the handshake ends (Linux also takes a valid cookie without data).
    fo.accepted = True
    lst.pending.add(conn)
    conn.stats.fastopen_accepted += 1
    # RFC 7323 2.2: the window of a SYN is never scaled.
    conn.snd_wnd = conn.max_snd_wnd = seg.window
    if seg.payload:
        moved = conn.rcvbuf.insert(1, seg.payload, conn._rcv_adv)
        conn.stats.bytes_received += moved
        conn._last_data_time = now
        if moved:
            conn._notify(DataReceived)


def sends_early(conn: Connection) -> bool:
    """RFC 7413 4.2.2 / 5.2: a connection that took a valid cookie's SYN sends data in
    SYN-RECEIVED, within its initial congestion window."""
    fo = conn.fastopen
    return isinstance(fo, ServerSession) and fo.accepted and conn.state is State.SYN_RECEIVED


def rto_after_handshake(conn: Connection, now: float) -> float | None:
    """The RTO deadline once our SYN is acknowledged: none, unless data sent before the
    handshake ended (RFC 7413 4.2.2, in SYN-RECEIVED) is still unacknowledged, which the
    timer keeps guarding (RFC 6298 (5.1))."""
    return now + conn.rtt.current_rto() if conn._snd_nxt > conn._snd_una else None


def accept_early(conn: Connection) -> bool:
    """The host moves such a connection to its listener's accept queue in SYN-RECEIVED."""
    return sends_early(conn)


def settle(conn: Connection) -> None:
    """Called by the host for each connection it looked at: one that leaves SYN-RECEIVED no
    longer counts against its listener's Fast Open queue (RFC 7413 5.1)."""
    fo = conn.fastopen
    if isinstance(fo, ServerSession) and conn.state is not State.SYN_RECEIVED:
        fo.listener.pending.discard(conn)


def syn_held(conn: Connection) -> bool:
    """A ``connect(defer=True)`` (TCP_FASTOPEN_CONNECT) whose SYN still waits for data."""
    return conn.state is State.SYN_SENT and not conn._syn_due and not conn._syn_sends


def client_id(address: Address) -> bytes:
    """What a cookie is bound to: the client's IP address. Not its UDP port: every
    ``open_tcp_stream`` takes a fresh one, and NATs rewrite it (Linux binds to the IP too)."""
    return address[0].encode()
