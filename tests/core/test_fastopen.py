"""TCP Fast Open (RFC 7413), segment in / segment out, plus the cookie machinery.

Server-side tables start from LISTEN with a Fast Open session the host would attach; client
tables from CLOSED with a session on a fresh cookie cache. Offsets as in test_states.py:
``L(n)`` ours, ``R(n)`` the peer's, both near 2**32.
"""

from __future__ import annotations

from _factories import (
    CONFIG,
    LOCAL_MSS,
    PEER_MSS,
    PEER_WSCALE,
    RTT,
    T_SYN,
    L,
    R,
    closed,
    drain,
    listen,
    ours,
    peer,
    peer_syn,
    settle,
)
from hypothesis import given
from hypothesis import strategies as st

from utcp import _fastopen
from utcp._config import Config
from utcp._connection import Connection
from utcp._events import DataReceived
from utcp._fastopen import (
    KEY_PERIOD,
    NEGATIVE_BASE,
    ClientCache,
    ClientSession,
    CookieKeys,
    ListenerFastOpen,
    ServerSession,
)
from utcp._host import Host
from utcp._state import State
from utcp._wire import ACK, PSH, SYN, DecodeError, Segment, decode_untrusted, encode

CLIENT = b"198.18.0.2"  # the peer's identity for cookies
KEYS = CookieKeys(b"listener secret!")
COOKIE = KEYS.cookie(CLIENT, T_SYN)
SERVER_KEY = (("198.18.0.1", 443), 443)
REQUEST = b"GET / HTTP/1.0\r\n\r\n"


def tfo_listen(*, refuse: bool = False, queue: int = 4) -> Connection:
    conn = listen()
    conn.fastopen = ServerSession(ListenerFastOpen(KEYS, queue), CLIENT, refuse=refuse)
    return conn


def synack(ack: int, **options: object) -> Segment:
    """Our SYN-ACK as a utcp server with CONFIG answers peer_syn()."""
    return ours(
        SYN | ACK,
        0,
        ack,
        window=min(1 << 18, 65535),
        mss=LOCAL_MSS,
        wscale=3,
        sack_permitted=True,
        **options,  # type: ignore[arg-type]
    )


class TestServer:
    def test_syn_data_with_valid_cookie_is_delivered_at_once(self) -> None:
        # RFC 7413 4.2.2: valid cookie: the data is the application's now, the SYN-ACK
        # acknowledges it, and the connection may answer before the handshake ends.
        conn = tfo_listen()
        conn.receive_segment(peer_syn(fastopen_cookie=COOKIE, payload=REQUEST), T_SYN)
        assert conn.segments_to_send(T_SYN) == [synack(1 + len(REQUEST))]
        assert conn.state is State.SYN_RECEIVED
        assert DataReceived() in drain(conn)
        assert conn.receive() == REQUEST
        assert _fastopen.accept_early(conn)
        assert conn.stats.fastopen_accepted == 1
        conn.send(b"200 OK")
        answer = (ACK | PSH, L(1), R(1 + len(REQUEST)), b"200 OK", None)
        assert brief(settle(conn, T_SYN)) == [answer]
        # The ACK of the SYN-ACK alone: the answer stays guarded by the RTO.
        conn.receive_segment(peer(ACK, 1 + len(REQUEST), 1), T_SYN + RTT)
        assert conn.state is State.ESTABLISHED
        assert conn.segments_to_send(T_SYN + RTT) == []
        deadline = conn.next_timer()
        assert deadline is not None
        conn.handle_timer(deadline)
        assert [s.payload for s in conn.segments_to_send(deadline)] == [b"200 OK"]

    def test_invalid_cookie_gets_a_cookie_and_only_the_syn_acked(self) -> None:
        # RFC 7413 4.2.2: an invalid cookie: data treated as not received, a fresh cookie.
        conn = tfo_listen()
        conn.receive_segment(peer_syn(fastopen_cookie=b"\0" * 8, payload=REQUEST), T_SYN)
        assert conn.segments_to_send(T_SYN) == [synack(1, fastopen_cookie=COOKIE)]
        assert conn.readable == 0
        assert not _fastopen.accept_early(conn)
        assert (conn.stats.fastopen_rejected, conn.stats.fastopen_cookies_sent) == (1, 1)

    def test_cookie_request_gets_a_cookie(self) -> None:
        # RFC 7413 4.2.1.
        conn = tfo_listen()
        conn.receive_segment(peer_syn(fastopen_cookie=b""), T_SYN)
        assert conn.segments_to_send(T_SYN) == [synack(1, fastopen_cookie=COOKIE)]
        assert conn.stats.fastopen_rejected == 0

    def test_cookie_of_the_previous_key_is_valid_and_renewed(self) -> None:
        # RFC 7413 4.1.2: key rotation accepts the previous key for one more period.
        now = T_SYN + KEY_PERIOD
        conn = tfo_listen()
        conn.receive_segment(peer_syn(fastopen_cookie=COOKIE, payload=b"x"), now)
        out = conn.segments_to_send(now)
        assert out[0].ack == R(2)
        assert out[0].fastopen_cookie == KEYS.cookie(CLIENT, now) != COOKIE
        stale = tfo_listen()
        stale.receive_segment(peer_syn(fastopen_cookie=COOKIE, payload=b"x"), now + KEY_PERIOD)
        assert stale.segments_to_send(now + KEY_PERIOD)[0].ack == R(1)

    def test_refused_under_pressure_is_a_plain_handshake(self) -> None:
        # RFC 7413 5.1: no data taken, no cookie.
        conn = tfo_listen(refuse=True)
        conn.receive_segment(peer_syn(fastopen_cookie=COOKIE, payload=REQUEST), T_SYN)
        assert conn.segments_to_send(T_SYN) == [synack(1)]
        assert conn.readable == 0

    def test_syn_data_without_the_option_is_not_taken(self) -> None:
        conn = tfo_listen()
        conn.receive_segment(peer_syn(payload=REQUEST), T_SYN)
        assert conn.segments_to_send(T_SYN) == [synack(1)]

    def test_retransmitted_syn_draws_the_same_syn_ack(self) -> None:
        conn = tfo_listen()
        syn = peer_syn(fastopen_cookie=COOKIE, payload=REQUEST)
        conn.receive_segment(syn, T_SYN)
        first = settle(conn, T_SYN)
        conn.receive_segment(syn, T_SYN + 0.1)
        assert settle(conn, T_SYN + 0.1) == first
        assert conn.receive() == REQUEST  # once


def tfo_closed(cache: ClientCache) -> Connection:
    conn = closed(CONFIG.replace(fastopen_connect=True))
    conn.fastopen = ClientSession(cache, SERVER_KEY)
    return conn


def peer_synack(ack: int, **options: object) -> Segment:
    """The SYN-ACK a utcp server with PEER_CONFIG sends (offsets: ours acked ``ack``)."""
    return peer(SYN | ACK, 0, ack, window=65535, mss=PEER_MSS, wscale=PEER_WSCALE, **options)


def brief(segs: list[Segment]) -> list[tuple[int, int, int, bytes, bytes | None]]:
    """What these tables pin down: flags, seq, ack, payload, Fast Open option."""
    return [(s.flags, s.seq, s.ack, bytes(s.payload), s.fastopen_cookie) for s in segs]


def cache_with_cookie() -> ClientCache:
    cache = ClientCache()
    cache.store(SERVER_KEY, COOKIE, PEER_MSS)
    return cache


class TestClient:
    def test_first_syn_asks_for_a_cookie_and_caches_it(self) -> None:
        # RFC 7413 4.2.1: the first SYN asks; the data waits for the handshake.
        cache = ClientCache()
        conn = tfo_closed(cache)
        conn.connect(T_SYN)
        conn.send(REQUEST)
        assert brief(settle(conn, T_SYN)) == [(SYN, L(0), 0, b"", b"")]
        conn.receive_segment(peer_synack(1, fastopen_cookie=COOKIE), T_SYN + RTT)
        assert conn.state is State.ESTABLISHED
        assert brief(settle(conn, T_SYN + RTT)) == [(ACK | PSH, L(1), R(1), REQUEST, None)]
        entry = cache.get(SERVER_KEY)
        assert entry is not None and (entry.cookie, entry.mss) == (COOKIE, PEER_MSS)

    def test_cached_cookie_sends_the_data_in_the_syn(self) -> None:
        # RFC 7413 4.2.2: cookie and data in the SYN; the SYN-ACK acknowledges both.
        conn = tfo_closed(cache_with_cookie())
        conn.connect(T_SYN)
        conn.send(REQUEST)
        assert brief(settle(conn, T_SYN)) == [(SYN, L(0), 0, REQUEST, COOKIE)]
        conn.receive_segment(peer_synack(1 + len(REQUEST)), T_SYN + RTT)
        assert conn.state is State.ESTABLISHED
        assert conn.snd_una == conn.snd_nxt == L(1 + len(REQUEST))
        end = 1 + len(REQUEST)
        assert brief(settle(conn, T_SYN + RTT)) == [(ACK, L(end), R(1), b"", None)]
        assert (conn.stats.fastopen_syn_data_sent, conn.stats.fastopen_syn_data_acked) == (1, 1)

    def test_syn_data_is_bounded_by_the_cached_mss(self) -> None:
        cache = ClientCache()
        cache.store(SERVER_KEY, COOKIE, 600)
        conn = tfo_closed(cache)
        conn.connect(T_SYN)
        conn.send(bytes(5000))
        (syn,) = settle(conn, T_SYN)
        assert len(syn.payload) == 600 - _fastopen.SYN_OPTION_SPACE

    def test_deferred_connect_waits_for_the_first_send(self) -> None:
        # Linux's TCP_FASTOPEN_CONNECT: connect() sends nothing; the first send the SYN.
        conn = tfo_closed(cache_with_cookie())
        conn.connect(T_SYN, defer=True)
        assert settle(conn, T_SYN) == []
        conn.send(REQUEST)
        assert brief(settle(conn, T_SYN)) == [(SYN, L(0), 0, REQUEST, COOKIE)]

    def test_data_not_acked_in_the_syn_ack_is_sent_again_after_the_handshake(self) -> None:
        # RFC 7413 4.2.2: the server rejected the cookie (its key changed): it acknowledges
        # only the SYN and gives a new cookie; the data goes again as ordinary data.
        cache = cache_with_cookie()
        conn = tfo_closed(cache)
        conn.connect(T_SYN)
        conn.send(REQUEST)
        settle(conn, T_SYN)
        conn.receive_segment(peer_synack(1, fastopen_cookie=b"new-cook"), T_SYN + RTT)
        assert conn.state is State.ESTABLISHED
        assert brief(settle(conn, T_SYN + RTT)) == [(ACK | PSH, L(1), R(1), REQUEST, None)]
        entry = cache.get(SERVER_KEY)
        assert entry is not None and entry.cookie == b"new-cook" and entry.off_until == 0.0
        assert conn.stats.fastopen_fallbacks == 1
        assert conn.stats.bytes_sent == len(REQUEST)

    def test_answer_without_the_cookie_turns_fast_open_off_for_a_while(self) -> None:
        # RFC 7413 4.1.3.1: a negative response; the next SYN to that server is plain.
        cache = cache_with_cookie()
        conn = tfo_closed(cache)
        conn.connect(T_SYN)
        conn.send(REQUEST)
        settle(conn, T_SYN)
        conn.receive_segment(peer_synack(1), T_SYN + RTT)
        assert brief(settle(conn, T_SYN + RTT)) == [(ACK | PSH, L(1), R(1), REQUEST, None)]
        entry = cache.get(SERVER_KEY)
        assert entry is not None and entry.off_until == T_SYN + RTT + NEGATIVE_BASE
        again = tfo_closed(cache)
        again.connect(T_SYN + 1)
        again.send(REQUEST)
        assert brief(settle(again, T_SYN + 1)) == [(SYN, L(0), 0, b"", None)]
        later = tfo_closed(cache)
        later.connect(T_SYN + RTT + NEGATIVE_BASE)
        later.send(REQUEST)
        assert settle(later, T_SYN + RTT + NEGATIVE_BASE)[0].payload == REQUEST

    def test_retransmitted_syn_carries_neither_data_nor_cookie(self) -> None:
        # RFC 7413 4.1.3.1 and Linux: the SYN-data goes once; the timer's SYN is plain, and
        # the loss is a negative response. The first SYN-ACK may still acknowledge the data.
        cache = cache_with_cookie()
        conn = tfo_closed(cache)
        conn.connect(T_SYN)
        conn.send(REQUEST)
        settle(conn, T_SYN)
        conn.handle_timer(T_SYN + 1.0)  # RFC 6298 (2.1): initial RTO 1 s
        assert brief(settle(conn, T_SYN + 1.0)) == [(SYN, L(0), 0, b"", None)]
        entry = cache.get(SERVER_KEY)
        assert entry is not None and entry.off_until == T_SYN + 1.0 + NEGATIVE_BASE
        assert conn.stats.fastopen_fallbacks == 1
        conn.receive_segment(peer_synack(1), T_SYN + 1.5)
        assert brief(settle(conn, T_SYN + 1.5)) == [(ACK | PSH, L(1), R(1), REQUEST, None)]
        assert conn.stats.fastopen_fallbacks == 1

    def test_late_syn_ack_of_the_syn_data_is_acceptable(self) -> None:
        conn = tfo_closed(cache_with_cookie())
        conn.connect(T_SYN)
        conn.send(REQUEST)
        settle(conn, T_SYN)
        conn.handle_timer(T_SYN + 1.0)
        settle(conn, T_SYN + 1.0)
        conn.receive_segment(peer_synack(1 + len(REQUEST)), T_SYN + 1.2)
        assert conn.state is State.ESTABLISHED
        assert conn.snd_una == L(1 + len(REQUEST))

    def test_simultaneous_open_turns_fast_open_off(self) -> None:
        # RFC 9293 3.5 figure 8 with a Fast Open SYN: RFC 7413 leaves it undefined; our
        # SYN-ACK carries no data, the peer's SYN-SENT took none, the data goes afterwards.
        conn = tfo_closed(cache_with_cookie())
        conn.connect(T_SYN)
        conn.send(REQUEST)
        settle(conn, T_SYN)
        conn.receive_segment(peer_syn(payload=b"theirs", fastopen_cookie=b""), T_SYN + 0.1)
        assert conn.state is State.SYN_RECEIVED
        assert brief(settle(conn, T_SYN + 0.1)) == [(SYN | ACK, L(0), R(1), b"", None)]
        conn.receive_segment(peer_synack(1), T_SYN + 0.2)
        assert conn.state is State.ESTABLISHED
        assert conn.readable == 0
        assert brief(settle(conn, T_SYN + 0.2)) == [(ACK | PSH, L(1), R(1), REQUEST, None)]

    def test_simultaneous_open_without_fast_open_is_unchanged(self) -> None:
        conn = closed()
        conn.connect(T_SYN)
        settle(conn, T_SYN)
        conn.receive_segment(peer_syn(), T_SYN + 0.1)
        assert brief(settle(conn, T_SYN + 0.1)) == [(SYN | ACK, L(0), R(1), b"", None)]
        conn.receive_segment(peer_synack(1), T_SYN + 0.2)
        assert conn.state is State.ESTABLISHED


class TestHost:
    """The listener's bounds (RFC 7413 5.1) and early accept, through a Host."""

    ADDR = ("198.18.0.1", 443)

    def host(self, *, queue: int, backlog: int = 16) -> Host:
        host = Host(CONFIG, address=self.ADDR, isn_key=b"k" * 16)
        host.listen(443, backlog=backlog, config=CONFIG.replace(fastopen_queue=queue))
        return host

    def syn(self, host: Host, port: int, cookie: bytes | None, now: float = T_SYN) -> None:
        seg = Segment(port, 443, 1000, 0, SYN, 65535, REQUEST, fastopen_cookie=cookie)
        host.receive_datagrams([(encode(seg), ("198.18.0.2", port))], now)
        host.datagrams_to_send(now)

    def test_valid_cookie_is_accepted_in_syn_received(self) -> None:
        host = self.host(queue=4)
        self.syn(host, 5000, KEYS.cookie(CLIENT, T_SYN))
        assert host.accept(443) is None  # wrong key: a different host secret
        cookie = host._cookie_keys.cookie(CLIENT, T_SYN)
        self.syn(host, 5001, cookie)
        conn = host.accept(443)
        assert conn is not None and conn.state is State.SYN_RECEIVED
        assert conn.receive() == REQUEST

    def test_fast_open_queue_bounds_pending_connections(self) -> None:
        host = self.host(queue=2)
        cookie = host._cookie_keys.cookie(CLIENT, T_SYN)
        for port in (5000, 5001, 5002):
            self.syn(host, port, cookie)
        accepted = [host.accept(443), host.accept(443), host.accept(443)]
        assert [c is not None for c in accepted] == [True, True, False]
        assert host.stats.fastopen_refused == 1
        # One completes its handshake: the queue has room again.
        first = accepted[0]
        assert first is not None
        ack = Segment(5000, 443, 1001 + len(REQUEST), (first.iss + 1) & 0xFFFFFFFF, ACK, 65535)
        host.receive_datagrams([(encode(ack), ("198.18.0.2", 5000))], T_SYN + 0.1)
        assert first.state is State.ESTABLISHED
        self.syn(host, 5003, cookie, T_SYN + 0.1)
        assert host.accept(443) is not None

    def test_syn_queue_pressure_refuses_fast_open(self) -> None:
        host = self.host(queue=16, backlog=4)
        for port in (5000, 5001):
            self.syn(host, port, None)  # two plain SYNs: half the backlog in SYN-RECEIVED
        self.syn(host, 5002, host._cookie_keys.cookie(CLIENT, T_SYN))
        assert host.accept(443) is None
        assert host.stats.fastopen_refused == 1

    def test_off_by_default(self) -> None:
        assert Config().fastopen_queue == 0 and not Config().fastopen_connect
        host = Host(Config(), address=self.ADDR, isn_key=b"k" * 16)
        host.listen(443)
        seg = Segment(5000, 443, 1000, 0, SYN, 65535, REQUEST, fastopen_cookie=b"")
        host.receive_datagrams([(encode(seg), ("198.18.0.2", 5000))], T_SYN)
        (datagram, _), *_ = host.datagrams_to_send(T_SYN)
        assert decode_untrusted(datagram).fastopen_cookie is None


class TestCookies:
    def test_cookie_is_bound_to_the_client_address(self) -> None:
        assert KEYS.check(COOKIE, CLIENT, T_SYN) == 1
        assert KEYS.check(COOKIE, b"198.18.0.3", T_SYN) == 0
        assert KEYS.check(COOKIE, CLIENT, T_SYN + KEY_PERIOD) == 2
        assert KEYS.check(COOKIE, CLIENT, T_SYN + 2 * KEY_PERIOD) == 0
        assert len(COOKIE) == _fastopen.COOKIE_LEN

    def test_cache_is_bounded_least_recently_used_first(self) -> None:
        cache = ClientCache(size=2)
        keys = [(("198.18.0.1", p), p) for p in (1, 2, 3)]
        cache.store(keys[0], b"a" * 8, 1000)
        cache.store(keys[1], b"b" * 8, 1000)
        cache.get(keys[0])
        cache.store(keys[2], b"c" * 8, 1000)
        assert len(cache) == 2 and cache.get(keys[1]) is None

    def test_negative_responses_back_off_exponentially(self) -> None:
        cache = ClientCache()
        for n in range(1, 4):
            cache.negative(SERVER_KEY, 0.0)
            entry = cache.get(SERVER_KEY)
            assert entry is not None and entry.off_until == NEGATIVE_BASE * 2 ** (n - 1)
        cache.store(SERVER_KEY, None, 1000)
        assert cache.usable(SERVER_KEY, 0.0) is not None


@given(cookie=st.binary(max_size=16), data=st.binary(max_size=30))
def test_fuzz_cookie_option_round_trips(cookie: bytes, data: bytes) -> None:
    seg = Segment(1, 2, 3, 0, SYN, 100, data, mss=1400, fastopen_cookie=cookie)
    back = decode_untrusted(encode(seg))
    assert back.fastopen_cookie == cookie and bytes(back.payload) == data


@given(length=st.integers(0, 255), body=st.binary(max_size=40), pad=st.binary(max_size=8))
def test_fuzz_cookie_option_decodes_or_fails_cleanly(length: int, body: bytes, pad: bytes) -> None:
    opts = bytes((34, length)) + body + pad
    opts = opts[:40]
    opts += b"\0" * (-len(opts) % 4)
    head = Segment(1, 2, 3, 0, SYN, 100)
    raw = bytearray(encode(head))
    raw[12] = (5 + len(opts) // 4) << 4
    raw[16:18] = b"\0\0"  # checksum 0: not computed (WIRE.md)
    try:
        seg = decode_untrusted(bytes(raw) + opts)
    except DecodeError as exc:
        assert exc.reason == "option"
        return
    if length >= 2 and seg.fastopen_cookie is not None:
        assert len(seg.fastopen_cookie) == length - 2 <= 16


@given(cookie=st.binary(max_size=16), data=st.binary(max_size=64))
def test_fuzz_any_cookie_is_answered_and_only_a_valid_one_takes_data(
    cookie: bytes, data: bytes
) -> None:
    conn = tfo_listen()
    conn.receive_segment(peer_syn(fastopen_cookie=cookie, payload=data), T_SYN)
    (synack,) = conn.segments_to_send(T_SYN)
    valid = cookie == COOKIE
    assert synack.ack == R(1 + len(data) if valid else 1)
    assert (synack.fastopen_cookie is None) == valid
    assert conn.readable == (len(data) if valid else 0)
