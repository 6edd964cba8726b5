"""A handshake whose final ACK is lost completes by the client's keep-alive (issue 15).

The server keeps its SYN-ACK within the amplification bound (docs/HARDENING.md): it is not
retransmitted unasked. A client whose final ACK was lost and that waits for the server to
speak first (a server-speaks-first protocol) sends nothing but keep-alives, which sit at
SND.NXT - 1 (RFC 9293 3.8.4), outside the server's window. The server takes such a probe's
ACK to complete its handshake (utcp/_handshake.py) instead of timing out and resetting a
working client. Found by the chaos test (seeds 6, 16, 17 and 21 of tests/core/test_chaos.py).
"""

from __future__ import annotations

from _factories import CONFIG, T_SYN, peer_syn, peer_ts, settle, syn_received

from utcp._config import Config
from utcp._state import State
from utcp._wire import ACK, SYN, decode_untrusted
from utcp.testing import CLIENT_ADDR, SERVER_ADDR, HostPair
from utcp.testing._network import Address


def test_keepalive_completes_a_handshake_whose_final_ack_was_lost() -> None:
    pair = HostPair(seed=9293, config=Config(keepalive_idle=20.0))
    lost: list[bytes] = []

    def lose_the_final_ack(now: float, src: Address, dst: Address, data: bytes) -> bool:
        # Every ACK of a SYN-ACK (at ISN + 1, no data) is lost, also those that answer the
        # SYN-ACK's retransmissions; the keep-alive (at ISN) gets through.
        seg = decode_untrusted(data)
        if src != CLIENT_ADDR or seg.flags != ACK or seg.payload or not pair.client.connections:
            return False
        (conn,) = pair.client.connections.values()
        if seg.seq == (conn.iss + 1) & 0xFFFFFFFF:
            lost.append(data)
            return True
        return False

    pair.net.add_filter(lose_the_final_ack)
    client = pair.client.connect(SERVER_ADDR, pair.now)
    pair.net.run(lambda: client.state is State.ESTABLISHED, timeout=5.0)
    assert lost
    accepted = []

    def server_accepted() -> bool:
        assert client.error is None, client.error
        conn = pair.server.accept(SERVER_ADDR[1])
        if conn is not None:
            accepted.append(conn)
        return bool(accepted)

    # The first keep-alive goes out keepalive_idle after the last segment.
    pair.net.run(server_accepted, timeout=30.0)
    server = accepted[0]
    assert server.state is State.ESTABLISHED and pair.now < 25.0
    # The probe echoes a 20 s old timestamp: no RTT sample from it (RFC 6298 3); the SYN-ACK
    # timer having fired, the RTO is the 3 s of RFC 6298 (5.7), not one from a 20 s sample.
    assert server.rtt.rto <= 3.0
    server.send(b"hello from the server")
    pair.net.run(lambda: client.readable >= 21, timeout=5.0)
    assert client.receive(100) == b"hello from the server"
    assert client.error is None and server.error is None


def test_synack_answering_a_retransmitted_syn_echoes_its_timestamp() -> None:
    # RFC 7323 4.3 (2): a retransmitted SYN (SEG.SEQ = IRS <= Last.ACK.sent, newer TSval)
    # updates TS.Recent, so the SYN-ACK it draws echoes it. Echoing the first SYN's TSval
    # instead hands the client an RTT sample as long as its SYN retransmissions took (6 s
    # in chaos seed 49, where the first SYN-ACK was lost and, with the amplification bound,
    # not resent until the third SYN paid for it): its RTO grew past its user timeout.
    conn = syn_received(CONFIG, ts=True)
    later = T_SYN + 6.0
    conn.receive_segment(peer_syn(ts=True, timestamps=(peer_ts(later), 0)), later)
    (synack,) = settle(conn, later)
    assert synack.flags == SYN | ACK
    assert synack.timestamps is not None and synack.timestamps[1] == peer_ts(later)
