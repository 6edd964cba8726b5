"""SYN floods (RFC 4987): a bounded SYN queue per listener, then stateless SYN cookies that
remember the MSS in the ISN and window scale and SACK-permitted in the TSval; the host
limits half-open connections per source and connections in all."""

from __future__ import annotations

import errno

import pytest

from utcp import Config, State
from utcp._host import Host
from utcp._syncookies import COOKIE_PERIOD, MSS_TABLE, SynCookies
from utcp._wire import ACK, RST, SYN, Address, Segment, decode_untrusted, encode
from utcp.testing import CLIENT_ADDR, SERVER_ADDR, HostPair, random_payload

SERVER: Address = ("198.18.0.1", 443)
CLIENT: Address = ("198.18.0.2", 5000)
KEY = b"s" * 16


def spoofed(i: int) -> Address:
    return (f"198.19.{i // 250}.{i % 250 + 1}", 1024 + i)


def syn_bytes(port: int, seq: int = 0xFFFFFF00, *, options: bool = True) -> bytes:
    seg = Segment(port, SERVER[1], seq, 0, SYN, 65535)
    if options:
        seg.mss, seg.wscale, seg.sack_permitted, seg.timestamps = 1452, 7, True, (1000, 0)
    return encode(seg)


def fill_syn_queue(server: Host, n: int, now: float = 0.0) -> None:
    server.receive_datagrams([(syn_bytes(spoofed(i)[1]), spoofed(i)) for i in range(n)], now)
    server.datagrams_to_send(now)


def shuttle(a: Host, b: Host, now: float, rounds: int = 6) -> None:
    """Carry datagrams between two hosts (lossless, no delay) until both are quiet."""
    for _ in range(rounds):
        moved = False
        for src, dst in ((a, b), (b, a)):
            batch = [(d, src.address) for d, to in src.datagrams_to_send(now) if to == dst.address]
            if batch:
                dst.receive_datagrams(batch, now)
                moved = True
        if not moved:
            return


def listening_server(config: Config | None = None, backlog: int = 4) -> Host:
    server = Host(config or Config(), address=SERVER, isn_key=KEY)
    server.listen(SERVER[1], backlog=backlog)
    return server


class TestSynQueue:
    def test_full_syn_queue_answers_with_a_cookie_and_keeps_no_state(self) -> None:
        server = listening_server(backlog=4)
        fill_syn_queue(server, 4)
        assert len(server.connections) == 4
        server.receive_datagrams([(syn_bytes(2000), ("198.18.9.9", 2000))], 0.0)
        out = server.datagrams_to_send(0.0)
        # RFC 4987 3.6: answered with a SYN-ACK, but no TCB is made for it.
        assert len(out) == 1 and out[0][1] == ("198.18.9.9", 2000)
        assert decode_untrusted(out[0][0]).flags == SYN | ACK
        assert len(server.connections) == 4
        assert server.stats.syn_cookies_sent == 1

    def test_cookies_off_drop_the_syn_and_count_it(self) -> None:
        server = listening_server(Config(syn_cookies=False), backlog=2)
        fill_syn_queue(server, 3)
        assert len(server.connections) == 2
        assert server.stats.syns_dropped_half_open == 1
        assert server.stats.syn_cookies_sent == 0

    def test_half_open_connections_per_source_are_bounded(self) -> None:
        server = listening_server(Config(max_half_open_per_source=2), backlog=100)
        addr = "198.18.7.7"
        server.receive_datagrams([(syn_bytes(p), (addr, p)) for p in (1, 2, 3)], 0.0)
        assert len(server.connections) == 2  # the third SYN got a cookie
        assert server.stats.syn_cookies_sent == 1
        server.receive_datagrams([(syn_bytes(4), ("198.18.7.8", 4))], 0.0)
        assert len(server.connections) == 3  # another source still gets state

    def test_connections_per_host_are_bounded(self) -> None:
        server = listening_server(Config(max_connections=2), backlog=100)
        fill_syn_queue(server, 3)
        assert len(server.connections) == 2
        assert server.stats.syns_dropped_connection_limit == 1
        with pytest.raises(OSError) as info:
            server.connect(("198.18.5.5", 80), 0.0)
        assert info.value.errno == errno.ENOBUFS


def cookie_handshake(
    client_config: Config, server_config: Config | None = None, *, ack_at: float = 0.0
) -> tuple[Host, Host]:
    server = listening_server(server_config, backlog=2)
    fill_syn_queue(server, 2)
    client = Host(client_config, address=CLIENT, isn_key=b"c" * 16)
    client.connect(SERVER, 0.0)
    shuttle(client, server, 0.0, rounds=1)  # SYN in, cookie SYN-ACK out, not yet ACKed
    assert server.stats.syn_cookies_sent == 1
    if ack_at:
        # Another cookie: the listener is still flooded.
        server.receive_datagrams([(syn_bytes(spoofed(99)[1]), spoofed(99))], ack_at)
    shuttle(client, server, ack_at)
    return client, server


class TestCookieHandshake:
    def test_cookie_ack_opens_an_established_connection_with_the_syns_options(self) -> None:
        client, server = cookie_handshake(Config(receive_buffer_size=4 << 20))
        conn = server.accept(SERVER[1])
        assert conn is not None and conn.state is State.ESTABLISHED
        assert server.stats.syn_cookies_validated == 1
        (cconn,) = client.connections.values()
        assert cconn.state is State.ESTABLISHED
        # MSS from the ISN; window scale and SACK-permitted from the TSval (Linux's layout).
        assert conn.peer_mss == 1452 and conn.local_mss == 1452
        assert conn.snd_wscale == cconn.rcv_wscale == 7
        assert conn.rcv_wscale == cconn.snd_wscale
        assert conn.sack_ok and cconn.sack_ok and conn.ts_ok and cconn.ts_ok
        assert conn.snd_nxt == cconn.rcv_nxt and conn.rcv_nxt == cconn.snd_nxt

    def test_without_timestamps_a_cookie_keeps_only_the_mss(self) -> None:
        client, server = cookie_handshake(Config(timestamps=False, mss=1300))
        conn = server.accept(SERVER[1])
        assert conn is not None and conn.state is State.ESTABLISHED
        (cconn,) = client.connections.values()
        # 1300 rounds down to the table's 1200; neither side scales or SACKs.
        assert conn.peer_mss == max(m for m in MSS_TABLE if m <= 1300)
        assert conn.snd_wscale == conn.rcv_wscale == cconn.snd_wscale == cconn.rcv_wscale == 0
        assert not conn.sack_ok and not cconn.sack_ok and not conn.ts_ok

    def test_a_small_mss_is_never_rounded_up(self) -> None:
        # RFC 9293 3.7.1: never send a segment larger than the peer's MSS option.
        _, server = cookie_handshake(Config(mss=300))
        conn = server.accept(SERVER[1])
        assert conn is not None and conn.peer_mss <= 300

    def test_cookie_from_the_previous_slice_is_accepted(self) -> None:
        _, server = cookie_handshake(Config(), ack_at=COOKIE_PERIOD * 1.5)
        assert server.stats.syn_cookies_validated == 1
        assert server.accept(SERVER[1]) is not None

    def test_cookie_older_than_two_slices_is_rejected_with_a_rst(self) -> None:
        client, server = cookie_handshake(Config(), ack_at=COOKIE_PERIOD * 2.5)
        assert server.stats.syn_cookies_rejected == 1
        assert server.accept(SERVER[1]) is None
        assert not client.connections  # RFC 9293 3.10.7.2: the RST reset it

    @pytest.mark.parametrize("delta", [1, -1, 1 << 24, 3])
    def test_forged_cookie_ack_is_rejected_and_answered_with_a_rst(self, delta: int) -> None:
        server = listening_server(backlog=1)
        fill_syn_queue(server, 2)  # the second got a cookie: cookies are in use
        addr = ("198.18.6.6", 777)
        server.receive_datagrams([(syn_bytes(777, seq=5000), addr)], 0.0)
        (synack,) = [decode_untrusted(d) for d, to in server.datagrams_to_send(0.0) if to == addr]
        ack = Segment(777, SERVER[1], 5001, (synack.seq + 1 + delta) & 0xFFFFFFFF, ACK, 100)
        ack.timestamps = (1001, synack.timestamps[1] if synack.timestamps else 0)
        server.receive_datagrams([(encode(ack), addr)], 1.0)
        out = server.datagrams_to_send(1.0)
        assert server.stats.syn_cookies_rejected == 1 and server.stats.syn_cookies_validated == 0
        assert [decode_untrusted(d).flags for d, to in out if to == addr] == [RST]
        assert server.accept(SERVER[1]) is None

    def test_ack_to_a_listener_that_sent_no_cookie_is_not_checked(self) -> None:
        server = listening_server()
        ack = Segment(9, SERVER[1], 1, 2, ACK, 100)
        server.receive_datagrams([(encode(ack), ("198.18.6.7", 9))], 0.0)
        assert server.stats.syn_cookies_rejected == 0
        assert server.stats.resets_sent == 1

    def test_valid_cookie_is_dropped_while_the_accept_queue_is_full(self) -> None:
        server = listening_server(backlog=1)
        fill_syn_queue(server, 1)
        a = Host(Config(), address=("198.18.0.3", 1), isn_key=b"a" * 16)
        b = Host(Config(), address=("198.18.0.4", 1), isn_key=b"b" * 16)
        for client in (a, b):
            client.connect(SERVER, 0.0)
            deliver(client, server, 0.0)  # SYN in
        synacks = server.datagrams_to_send(0.0)  # two cookie SYN-ACKs
        assert server.stats.syn_cookies_sent == 2
        for client in (a, b):
            client.receive_datagrams([(d, SERVER) for d, to in synacks if to == client.address], 0)
        deliver(a, server, 0.0)
        assert server.accept_ready(SERVER[1])  # the accept queue (backlog 1) is full
        deliver(b, server, 0.0)
        assert server.stats.syn_cookies_validated == 1
        assert server.stats.syn_cookies_dropped == 1
        assert len(server.connections) == 2  # the spoofed half-open one and a's
        c = Host(Config(), address=("198.18.0.5", 1), isn_key=b"c" * 16)
        c.connect(SERVER, 0.0)
        deliver(c, server, 0.0)
        assert server.stats.syns_dropped_backlog == 1  # Linux drops SYNs then too

    def test_a_later_segment_arriving_first_is_dropped_without_a_rst(self) -> None:
        # The cookie is checked against SEG.SEQ - 1: only the client's first segment after
        # the handshake can open the connection. With it lost, the next one is dropped
        # unanswered (Linux would reset the connection) until the first is resent.
        server = listening_server(backlog=1)
        fill_syn_queue(server, 1)
        client = Host(Config(nodelay=True), address=CLIENT, isn_key=b"c" * 16)
        cconn = client.connect(SERVER, 0.0)
        deliver(client, server, 0.0)
        deliver(server, client, 0.0)
        assert cconn.state is State.ESTABLISHED
        client.datagrams_to_send(0.0)  # the third ACK: lost
        cconn.send(b"first ")
        client.touch(cconn)
        client.datagrams_to_send(0.0)  # lost too
        cconn.send(b"second")
        client.touch(cconn)
        deliver(client, server, 0.0)
        assert server.stats.syn_cookies_rejected == 1
        assert server.datagrams_to_send(0.0) == [] and len(server.connections) == 1
        got = b""
        for _ in range(10):
            t = client.next_timer()
            assert t is not None
            client.handle_timer(t)
            shuttle(client, server, t)
            conn = server.accept(SERVER[1]) if not got else None
            if conn is not None:
                got = conn.receive()
                break
        assert got == b"first second" or got == b"first "
        assert cconn.state is State.ESTABLISHED and server.stats.syn_cookies_validated == 1


def deliver(src: Host, dst: Host, now: float) -> None:
    batch = [(d, src.address) for d, to in src.datagrams_to_send(now) if to == dst.address]
    dst.receive_datagrams(batch, now)


def test_legitimate_client_connects_and_transfers_through_a_spoofed_syn_flood() -> None:
    pair = HostPair(seed=15)
    flood = [(syn_bytes(spoofed(i)[1], seq=i * 7919), spoofed(i)) for i in range(2000)]
    for data, src in flood:
        pair.net.inject(src, SERVER_ADDR, data)
    pair.net.run_for(0.5)
    lst = pair.server.listeners[SERVER_ADDR[1]]
    assert len(lst.pending) == lst.backlog  # the SYN queue is full of spoofed entries
    assert pair.server.stats.syn_cookies_sent == 2000 - lst.backlog
    up, down = random_payload(1, 300_000), random_payload(2, 200_000)
    result = pair.transfer(up, down)
    assert result.intact
    assert pair.server.stats.syn_cookies_validated == 1
    assert len(pair.server.connections) <= lst.backlog + 1  # no state per flooding SYN
    assert CLIENT_ADDR in {c.remote_address for c in pair.server.connections.values()}


@pytest.mark.parametrize("mss", MSS_TABLE)
@pytest.mark.parametrize("shift", [-1, 1, 2, 6])
def test_a_cookie_checked_against_a_neighbouring_sequence_number_fails(
    mss: int, shift: int
) -> None:
    # Only the client's first segment after the handshake (SEG.SEQ - 1 = its ISN) may open
    # the connection: one a few bytes off would give the connection a wrong IRS.
    cookies = SynCookies(KEY)
    conn_id = b"198.18.0.1|443|198.18.0.2|5000|5000"
    isn = cookies.make_isn(conn_id, 0xFFFFFFFE, mss, 10.0)
    assert cookies.check_isn(conn_id, 0xFFFFFFFE, isn, 10.0) == mss
    assert cookies.check_isn(conn_id, (0xFFFFFFFE + shift) & 0xFFFFFFFF, isn, 10.0) is None


def test_keepalive_after_a_cookie_ack_dropped_by_a_full_accept_queue_opens_in_sequence() -> None:
    # The accept queue is full when the client's cookie ACK arrives: it is dropped (as
    # Linux drops it). The client, ESTABLISHED, stays idle past keepalive_idle and probes
    # with SEG.SEQ = SND.NXT - 1 = its ISN (RFC 9293 3.8.4), then sends its first data.
    server = listening_server(backlog=1)
    fill_syn_queue(server, 1)
    other = Host(Config(), address=("198.18.0.3", 1), isn_key=b"a" * 16)
    client = Host(Config(nodelay=True), address=CLIENT, isn_key=b"c" * 16)
    for host in (other, client):
        host.connect(SERVER, 0.0)
        deliver(host, server, 0.0)
    synacks = server.datagrams_to_send(0.0)
    for host in (other, client):
        host.receive_datagrams([(d, SERVER) for d, to in synacks if to == host.address], 0.0)
    deliver(other, server, 0.0)
    (cconn,) = client.connections.values()
    deliver(client, server, 0.0)
    assert server.stats.syn_cookies_dropped == 1
    assert server.accept(SERVER[1]) is not None  # the application makes room
    now = 0.0
    while now < cconn.config.keepalive_idle + 1.0:
        now = min(t for t in (client.next_timer(), server.next_timer(), 21.0) if t is not None)
        client.handle_timer(now)
        server.handle_timer(now)
        shuttle(client, server, now)
    assert cconn.stats.keepalive_probes >= 1 and cconn.state is State.ESTABLISHED
    message = random_payload(3, 64)
    cconn.send(message)
    client.touch(cconn)
    got = b""
    for _ in range(20):
        shuttle(client, server, now)
        if (conn := server.accept(SERVER[1])) is not None:
            got = conn.receive()
            break
        now = min(t for t in (client.next_timer(), server.next_timer()) if t is not None)
        client.handle_timer(now)
        server.handle_timer(now)
    assert got == message
    shuttle(client, server, now)
    assert cconn.state is State.ESTABLISHED and cconn.stats.bytes_acked == len(message)
