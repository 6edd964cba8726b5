"""Hostile input at the host (docs/HARDENING.md): no amplification towards unvalidated
addresses, rate-limited RSTs, a randomised host-wide challenge-ACK budget (RFC 5961 7,
CVE-2016-5696), and garbage dropped and counted, never raised."""

from __future__ import annotations

import random
import struct

import pytest

from utcp import Config, State
from utcp._host import Host
from utcp._limits import ChallengeAckLimit
from utcp._wire import ACK, SYN, Address, Segment, decode_untrusted, encode
from utcp.testing import CLIENT_ADDR, SERVER_ADDR, HostPair

SERVER: Address = ("198.18.0.1", 443)
KEY = b"h" * 16


def listening(config: Config | None = None, backlog: int = 8) -> Host:
    host = Host(config or Config(), address=SERVER, isn_key=KEY)
    host.listen(SERVER[1], backlog=backlog)
    return host


def run_until_idle(host: Host, now: float, horizon: float) -> list[tuple[bytes, Address]]:
    """Run the host's timers until nothing is due before ``horizon``; everything it sent."""
    sent = host.datagrams_to_send(now)
    for _ in range(1000):
        deadline = host.next_timer()
        if deadline is None or deadline > horizon:
            break
        host.handle_timer(deadline)
        sent += host.datagrams_to_send(deadline)
    return sent


def bare_syn(port: int, seq: int = 7) -> bytes:
    return encode(Segment(port, SERVER[1], seq, 0, SYN, 1000))


class TestAmplification:
    @pytest.mark.parametrize("backlog", [8, 1], ids=["stateful", "cookie"])
    def test_synack_is_never_larger_than_a_syn_without_options(self, backlog: int) -> None:
        host = listening(backlog=backlog)
        if backlog == 1:
            host.receive_datagrams([(bare_syn(1), ("198.19.0.1", 1))], 0.0)
            host.datagrams_to_send(0.0)
            host.stats.synacks_trimmed = 0
        addr = ("198.18.3.3", 3)
        syn = bare_syn(3)
        host.receive_datagrams([(syn, addr)], 0.0)
        (synack,) = [d for d, to in host.datagrams_to_send(0.0) if to == addr]
        # The MSS option alone would make it 24 bytes: it is left out (RFC 9293 3.7.1:
        # the peer then sends at most 536-byte segments, which we accept).
        assert len(synack) <= len(syn) == 20
        seg = decode_untrusted(synack)
        assert seg.flags == SYN | ACK and seg.mss is None
        assert host.stats.synacks_trimmed == 1

    def test_half_open_connection_sends_no_more_than_its_peer_did(self) -> None:
        host = listening()
        addr = ("198.19.4.4", 4)
        syn = encode(
            Segment(4, SERVER[1], 9, 0, SYN, 1000, mss=1452, sack_permitted=True, wscale=7)
        )
        host.receive_datagrams([(syn, addr)], 0.0)
        sent = run_until_idle(host, 0.0, 100.0)
        to_victim = [d for d, to in sent if to == addr]
        # RFC 9000 8.1's factor: the SYN-ACK and two timer retransmissions (at 1 s and 3 s),
        # then the timer's further ones are withheld.
        assert sum(map(len, to_victim)) <= 3 * len(syn) and len(to_victim) == 3
        assert all(len(d) <= len(syn) for d in to_victim)
        assert host.stats.amplification_drops >= 3
        # A retransmitted SYN pays for more (RFC 9293 3.10.7.4: it is answered).
        host.receive_datagrams([(syn, addr)], 100.0)
        again = [d for d, to in host.datagrams_to_send(100.0) if to == addr]
        assert len(again) == 1 and decode_untrusted(again[0]).flags == SYN | ACK

    def test_a_lost_final_ack_is_recovered_by_a_synack_retransmission(self) -> None:
        # The client is ESTABLISHED and waits for the server to speak; only our SYN-ACK
        # retransmission can draw the ACK that completes the server's handshake.
        pair = HostPair(seed=5)
        dropped: list[float] = []

        def drop_first_ack(now: float, src: object, dst: object, data: bytes) -> bool:
            if src == CLIENT_ADDR and decode_untrusted(data).flags == ACK and not dropped:
                dropped.append(now)
                return True
            return False

        pair.net.add_filter(drop_first_ack)
        _client, server = pair.connect()
        assert dropped and server.state is State.ESTABLISHED
        assert pair.server.stats.amplification_drops == 0

    def test_a_real_handshake_is_unaffected(self) -> None:
        pair = HostPair(seed=3)
        client, server = pair.connect()
        assert client.state is State.ESTABLISHED and server.state is State.ESTABLISHED
        assert pair.server.stats.amplification_drops == 0
        assert pair.server.stats.synacks_trimmed == 0


class TestResetRateLimit:
    @staticmethod
    def stray(port: int) -> bytes:
        return encode(Segment(port, 9999, 1, 2, ACK, 100))  # for no connection

    def test_rsts_to_one_source_are_limited_per_second(self) -> None:
        host = Host(Config(rst_rate_limit_per_source=10), address=SERVER, isn_key=KEY)
        host.receive_datagrams([(self.stray(p), ("198.18.1.1", p)) for p in range(50)], 0.0)
        host.receive_datagrams([(self.stray(1), ("198.18.1.2", 1))], 0.0)
        out = host.datagrams_to_send(0.0)
        assert len([1 for _, to in out if to[0] == "198.18.1.1"]) == 10
        assert len([1 for _, to in out if to[0] == "198.18.1.2"]) == 1  # others still heard
        assert host.stats.resets_rate_limited_per_source == 40
        host.receive_datagrams([(self.stray(p), ("198.18.1.1", p)) for p in range(50)], 0.5)
        assert len(host.datagrams_to_send(0.5)) == 5  # refilled at 10 per second

    def test_loopback_sources_are_limited_only_globally(self) -> None:
        host = Host(Config(rst_rate_limit_per_source=10), address=SERVER, isn_key=KEY)
        host.receive_datagrams([(self.stray(p), ("127.0.0.1", p)) for p in range(50)], 0.0)
        assert len(host.datagrams_to_send(0.0)) == 50

    def test_rsts_are_limited_globally(self) -> None:
        host = Host(Config(rst_rate_limit=20), address=SERVER, isn_key=KEY)
        batch = [(self.stray(1), (f"198.18.{i // 200}.{i % 200 + 1}", 1)) for i in range(100)]
        host.receive_datagrams(batch, 0.0)
        assert len(host.datagrams_to_send(0.0)) == 20
        assert host.stats.resets_rate_limited == 80


class TestChallengeAckLimit:
    def test_each_seconds_budget_is_drawn_between_half_and_one_and_a_half_limits(self) -> None:
        limit = ChallengeAckLimit(100, b"any secret")
        budgets = set()
        for second in range(200):
            n = 0
            while limit.allow(second + 0.5) and n < 1000:
                n += 1
            budgets.add(n)
        assert min(budgets) >= 50 and max(budgets) < 150
        assert len(budgets) > 20  # not a constant an attacker could count against

    def test_challenge_acks_are_limited_across_all_connections(self) -> None:
        # RFC 5961 7 per connection allows 100 a second; the host allows 1 or 2 in all.
        config = Config(challenge_ack_limit_global=2)
        pair = HostPair(seed=4, server_config=config)
        conns = []
        for port in (1001, 1002, 1003, 1004):
            pair.client.connect(SERVER_ADDR, pair.now, local_port=port)
        pair.net.run_for(1.0)
        while (conn := pair.server.accept(SERVER_ADDR[1])) is not None:
            conns.append(conn)
        assert len(conns) == 4
        t = pair.now
        for conn in conns:  # an off-path SYN into each connection (RFC 5961 4.2)
            syn = Segment(conn.remote_port, conn.local_port, 12345, 0, SYN, 100)
            syn.timestamps = ((conn.ts_recent + 1000) & 0xFFFFFFFF, 0)
            pair.server.receive_datagrams([(encode(syn), CLIENT_ADDR)], t)
        pair.server.datagrams_to_send(t)
        stats = pair.server.stats
        assert 1 <= stats.challenge_acks_sent <= 2
        assert stats.challenge_acks_sent + stats.challenge_acks_rate_limited == 4
        assert sum(c.stats.challenge_acks_sent for c in conns) == stats.challenge_acks_sent


def _checksummed(data: bytes) -> bytes:
    """``data`` with its checksum field zeroed (WIRE.md: 0 means not computed)."""
    return data[:16] + b"\0\0" + data[18:]


GOOD = encode(Segment(5, SERVER[1], 1, 0, SYN, 1000, mss=1452))
GARBAGE = {
    "zero-length": (b"", "malformed_drops"),
    "truncated header": (GOOD[:19], "malformed_drops"),
    "offset below 5": (_checksummed(GOOD[:12] + bytes([0x40]) + GOOD[13:]), "malformed_drops"),
    "offset past the end": (_checksummed(GOOD[:12] + bytes([0xF0]) + GOOD[13:]), "malformed_drops"),
    "option overrun": (
        _checksummed(GOOD[:12] + bytes([0x60]) + GOOD[13:20] + bytes([2, 40, 5, 0])),
        "malformed_drops",
    ),
    "option without length": (
        _checksummed(GOOD[:12] + bytes([0x60]) + GOOD[13:20] + bytes([1, 1, 1, 2])),
        "malformed_drops",
    ),
    "bad MSS length": (
        _checksummed(GOOD[:12] + bytes([0x60]) + GOOD[13:20] + bytes([2, 3, 5, 1])),
        "malformed_drops",
    ),
    "bad checksum": (GOOD[:16] + struct.pack("!H", 0x1234) + GOOD[18:], "checksum_drops"),
}


class TestGarbage:
    @pytest.mark.parametrize("name", list(GARBAGE))
    def test_malformed_datagram_is_dropped_and_counted(self, name: str) -> None:
        data, counter = GARBAGE[name]
        host = listening()
        host.receive_datagrams([(data, ("198.18.2.2", 5))], 0.0)
        assert getattr(host.stats, counter) == 1
        assert host.datagrams_to_send(0.0) == [] and not host.connections

    def test_every_truncation_and_bit_flip_of_a_segment_is_survived(self) -> None:
        host = listening()
        rng = random.Random(5)
        batch: list[tuple[bytes, Address]] = []
        for cut in range(len(GOOD)):
            batch.append((GOOD[:cut], ("198.18.2.3", cut)))
        for i in range(300):
            damaged = bytearray(GOOD)
            damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
            batch.append((_checksummed(bytes(damaged)), ("198.18.2.4", i)))
        host.receive_datagrams(batch, 0.0)
        host.datagrams_to_send(0.0)
        s = host.stats
        assert s.datagrams_received == len(batch)
        assert s.malformed_drops >= len(GOOD)  # every truncation

    def test_segment_for_no_connection_from_a_spoofed_source_draws_only_a_small_rst(
        self,
    ) -> None:
        host = listening()
        data = encode(Segment(7, 4444, 1, 2, ACK, 100, payload=b"x" * 100))
        host.receive_datagrams([(data, ("198.18.2.5", 7))], 0.0)
        (rst,) = host.datagrams_to_send(0.0)
        assert len(rst[0]) == 20 < len(data)
        assert host.stats.drops == {"no connection": 1}
