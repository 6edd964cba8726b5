"""A legitimate client whose cookie-completing ACK is lost still connects (RFC 4987 3.6).

With SYN cookies the listener keeps no state until an ACK returns a valid cookie, and the
cookie's check reads the client's ISN from that ACK's sequence number minus one. If the
handshake's ACK (with or without the first data; both start at ISN + 1) is lost, as happens when a
flood overflows the server's socket buffer, the client's later segments sit further on and
cannot pass the check. Answering them with a RST (RFC 9293 3.10.7.2, as Linux does) resets a
legitimate connection that the flood would otherwise only have delayed; instead a segment with
data or FIN that fails the check while cookies are in use is dropped without an answer, and
the client's retransmission from SND.UNA (at ISN + 1) opens the connection.
"""

from __future__ import annotations

from utcp._wire import ACK, Segment, decode_untrusted, encode
from utcp.testing import CLIENT_ADDR, SERVER_ADDR, HostPair, random_payload
from utcp.testing._network import Address

FLOOD = 200


def spoofed(i: int) -> Address:
    return (f"198.19.{i // 250}.{i % 250 + 1}", 1024 + i)


def test_client_whose_cookie_ack_and_first_data_are_lost_still_transfers() -> None:
    pair = HostPair(seed=4987)
    for i in range(FLOOD):
        syn = Segment(spoofed(i)[1], SERVER_ADDR[1], i * 7919, 0, 0x02, 65535, mss=1400)
        pair.net.inject(spoofed(i), SERVER_ADDR, encode(syn))
    pair.net.run_for(0.1)
    lst = pair.server.listeners[SERVER_ADDR[1]]
    assert len(lst.pending) == lst.backlog or pair.server.stats.syn_cookies_sent > 0
    lost: list[int] = []

    def lose_the_first_two_at_isn_plus_one(
        now: float, src: Address, dst: Address, data: bytes
    ) -> bool:
        if src != CLIENT_ADDR or len(lost) >= 2:
            return False
        seg = decode_untrusted(data)
        (client,) = pair.client.connections.values()
        if seg.flags & ACK and seg.seq == (client.iss + 1) & 0xFFFFFFFF:
            lost.append(len(seg.payload))
            return True
        return False

    pair.net.add_filter(lose_the_first_two_at_isn_plus_one)
    up = random_payload(1, 100_000)
    client = pair.client.connect(SERVER_ADDR, pair.now)
    sent = client.send(up)  # queued in SYN-SENT, sent as soon as the SYN-ACK arrives
    received = bytearray()
    accepted = []

    def done() -> bool:
        nonlocal sent
        if client.error is not None:
            raise client.error
        sent += client.send(up[sent:]) if sent < len(up) else 0
        if not accepted and (conn := pair.server.accept(SERVER_ADDR[1])) is not None:
            accepted.append(conn)
        if accepted:
            received.extend(accepted[0].receive(1 << 20))
        return len(received) == len(up)

    pair.net.run(done, timeout=120.0)
    assert bytes(received) == up
    # The handshake's ACK (carrying the first data) and its first retransmission were lost.
    assert lost == [client.effective_mss] * 2
    assert pair.server.stats.syn_cookies_validated == 1
