"""The sender's loss recovery (``utcp._loss_recovery``), segment by segment.

Each test drives the ESTABLISHED factory connection (our MSS 1400 towards the peer, SRTT
0.5 s from the handshake, RTO 1.5 s) with hand-made ACKs from the peer and checks what the
RFCs prescribe for the congestion state, the segments sent and the samples taken.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from _factories import (
    CONFIG,
    T_EST,
    T_SYN,
    L,
    established,
    local_ts,
    peer,
    peer_syn,
    peer_ts,
    route_method,
    syn_received,
    syn_sent,
)

from utcp import Config
from utcp._connection import Connection
from utcp._state import State
from utcp._wire import ACK, FIN, SYN, Segment, decode_untrusted
from utcp.testing import CLIENT_ADDR, HostPair, LinkConfig, random_payload

MSS = 1400  # min(our 1452, the peer's 1400), no timestamps
TLP_CONFIG = replace(CONFIG, tail_loss_probe=True)


def start(n: int) -> int:
    """Offset of the first byte of data segment ``n`` (data starts at offset 1)."""
    return 1 + n * MSS


def send(conn: Connection, segments: int, now: float) -> list[Segment]:
    conn.send(b"x" * (segments * MSS))
    return conn.segments_to_send(now)


def ack(conn: Connection, upto: int, now: float, *sack: tuple[int, int]) -> list[Segment]:
    """The peer acknowledges up to offset ``upto`` with SACK blocks (offset pairs)."""
    blocks = tuple((L(a), L(b)) for a, b in sack)
    conn.receive_segment(peer(ACK, 1, upto, sack_blocks=blocks), now)
    return conn.segments_to_send(now)


def data_offsets(out: list[Segment]) -> list[int]:
    return [(s.seq - L(0)) % 2**32 for s in out if s.payload]


class TestTimeout:
    def test_first_ack_after_rto_does_not_start_fast_recovery(self) -> None:
        # RFC 6675 5.1 / RFC 6582 3.2: an RTO sets RecoveryPoint to SND.NXT and no new
        # recovery starts before it is acknowledged: one RTO, one loss response.
        conn = established()
        send(conn, 10, T_EST)
        t = T_EST + conn.rtt.current_rto()
        conn.handle_timer(t)
        assert data_offsets(conn.segments_to_send(t)) == [start(0)]
        ssthresh = conn.cc.ssthresh
        out = ack(conn, start(1), t + 0.5)
        assert conn.cc.ssthresh == ssthresh
        assert conn.stats.fast_retransmits == 0
        # Slow start after the timeout: cwnd grew by the segment acknowledged.
        assert data_offsets(out) == [start(1), start(2)]


class TestProportionalRateReduction:
    def test_sacked_bytes_count_as_delivered_once(self) -> None:
        # RFC 9937 4-5: DeliveredData = change in SND.UNA + change in SACKed bytes, where
        # bytes SACKed earlier and now cumulatively acknowledged reduce the SACKed total.
        conn = established()
        send(conn, 10, T_EST)
        ack(conn, start(0), T_EST + 0.5, (start(1), start(4)))
        prr = conn.recovery._prr
        assert prr is not None and prr.delivered == 3 * MSS
        # The retransmission of 0 arrives: the ACK moves to 4, but 1-3 were delivered
        # (SACKed) before: this ACK delivered one segment, not four.
        ack(conn, start(4), T_EST + 1.0)
        assert conn.in_recovery
        assert prr.delivered == 4 * MSS

    def test_without_sack_duplicate_acks_are_not_counted_again(self) -> None:
        # RFC 9937 (DeliveredData without SACK): each duplicate ACK stands for one segment
        # delivered; the partial ACK that later covers those segments delivered only the
        # retransmission. Segments 0 and 5 are lost; 1-4 and 6-9 draw 8 duplicate ACKs
        # (the third starts recovery); the resent 0 moves the ACK to 5.
        conn = established(sack_permitted=False)
        send(conn, 10, T_EST)
        for n in range(8):
            ack(conn, start(0), T_EST + 0.5 + n * 0.001)
        prr = conn.recovery._prr
        assert prr is not None and prr.delivered == 6 * MSS
        ack(conn, start(5), T_EST + 1.0)
        assert conn.in_recovery
        assert prr.delivered == 7 * MSS

    def test_ack_that_does_not_advance_snd_una_gets_no_slow_start_bonus(self) -> None:
        # RFC 9937 4: PRR-CRB by default; PRR-SSRB's extra segment only on an ACK that
        # advances SND.UNA and indicates no further loss. Segments 0-4 are lost and one
        # ACK SACKs 5-9: pipe 0, ssthresh 7 segments, DeliveredData 5 segments: the five
        # retransmissions go out, and no new segment beside them.
        conn = established()
        send(conn, 10, T_EST)
        conn.send(b"y" * (10 * MSS))
        out = ack(conn, start(0), T_EST + 0.5, (start(5), start(10)))
        assert conn.cc.ssthresh == 7 * MSS
        assert data_offsets(out) == [start(n) for n in range(5)]


class TestRttSamples:
    def test_ack_covering_a_retransmission_gives_no_sample_without_timestamps(self) -> None:
        # RFC 6298 3 (Karn): segment 0 was resent at T_EST + 0.5; the ACK of all ten at
        # T_EST + 1.0 covers it and never-resent segments sent at T_EST. Timing those
        # would measure 1.0 s on a 0.5 s path; without timestamps: no sample.
        conn = established()
        send(conn, 10, T_EST)
        ack(conn, start(0), T_EST + 0.5, (start(1), start(4)))
        ack(conn, start(10), T_EST + 1.0)
        assert conn.rtt.srtt == 0.5
        assert conn.rtt.latest_rtt == 0.5

    def test_ack_covering_a_retransmission_samples_the_echoed_timestamp(self) -> None:
        # RFC 7323 4.1: with timestamps, the sample is the echoed TSval's age: the
        # retransmission's (T_EST + 0.5), which filled the hole, 0.5 s.
        conn = established(ts=True)
        mss = conn.effective_mss
        conn.send(b"x" * (10 * mss))
        conn.segments_to_send(T_EST)

        def ts_ack(upto: int, now: float, echo: float, *sack: tuple[int, int]) -> None:
            blocks = tuple((L(a), L(b)) for a, b in sack)
            ts = (peer_ts(now), local_ts(conn, echo))
            conn.receive_segment(peer(ACK, 1, upto, sack_blocks=blocks, timestamps=ts), now)
            conn.segments_to_send(now)

        ts_ack(1, T_EST + 0.5, T_EST, (1 + mss, 1 + 4 * mss))
        assert conn.stats.fast_retransmits == 1
        ts_ack(1 + 10 * mss, T_EST + 1.0, T_EST + 0.5)
        assert conn.rtt.latest_rtt == pytest.approx(0.5)

    def test_segments_sacked_earlier_give_no_sample_when_cumulatively_acked(self) -> None:
        # Segment 0 (sent at T_EST) is delayed; 1 and 2 (sent 0.1 s later) are SACKed at
        # T_EST + 0.6. The ACK at T_EST + 0.65 that covers all three was caused by 0: its
        # sample is 0.65 s, not the age of 2, which was delivered before.
        conn = established()
        send(conn, 1, T_EST)
        send(conn, 2, T_EST + 0.1)
        ack(conn, start(0), T_EST + 0.6, (start(1), start(3)))
        assert conn.stats.fast_retransmits == 0  # within RACK's reordering window
        ack(conn, start(3), T_EST + 0.65)
        assert conn.rtt.latest_rtt == pytest.approx(0.65)


class TestHandshakeSample:
    def test_duplicate_syn_does_not_restamp_the_syn_ack(self) -> None:
        # RFC 6298 3 (Karn): the peer's SYN is retransmitted at T_SYN + 0.5 and we answer
        # with our SYN-ACK again; its ACK at T_SYN + 0.6 may be for either copy. No sample
        # (no timestamps here), so no SRTT of 0.1 s on a path of 0.6 s either.
        conn = syn_received()
        conn.receive_segment(peer_syn(), T_SYN + 0.5)
        assert [s.flags for s in conn.segments_to_send(T_SYN + 0.5)] == [SYN | ACK]
        conn.receive_segment(peer(ACK, 1, 1), T_SYN + 0.6)
        assert conn.state is State.ESTABLISHED
        assert conn.rtt.srtt is None
        assert conn.rtt.current_rto() == CONFIG.initial_rto

    def test_duplicate_syn_then_timestamps_give_the_sample(self) -> None:
        conn = syn_received(ts=True)
        conn.receive_segment(peer_syn(ts=True), T_SYN + 0.5)
        conn.segments_to_send(T_SYN + 0.5)
        ts = (peer_ts(T_SYN + 0.3), local_ts(conn, T_SYN))
        conn.receive_segment(peer(ACK, 1, 1, timestamps=ts), T_SYN + 0.6)
        assert conn.rtt.srtt == pytest.approx(0.6)


class TestInitialWindow:
    def connected_after(self, syn_retransmissions: int) -> Connection:
        """SYN-SENT; the SYN resent by the timer ``syn_retransmissions`` times; then the
        peer's SYN-ACK arrives and we send ten segments of data."""
        conn = syn_sent()
        t = T_SYN
        for n in range(syn_retransmissions):
            t += 2.0**n
            conn.handle_timer(t)
            assert [s.flags for s in conn.segments_to_send(t)] == [SYN]
        t += 0.5
        synack = peer(SYN | ACK, 0, 1, window=65535, mss=1400, wscale=7, sack_permitted=True)
        conn.receive_segment(synack, t)
        assert conn.state is State.ESTABLISHED
        conn.send(b"x" * (10 * MSS))
        return conn

    def test_one_segment_after_more_than_one_syn_retransmission(self) -> None:
        # RFC 6928 2: implementations refrain from resetting the initial window to one
        # segment "unless there have been more than one SYN or SYN/ACK retransmissions".
        conn = self.connected_after(2)
        out = conn.segments_to_send(4.0)
        assert data_offsets(out) == [start(0)]
        assert conn.cc.cwnd == MSS

    def test_initial_window_kept_after_a_single_syn_retransmission(self) -> None:
        conn = self.connected_after(1)
        out = conn.segments_to_send(2.0)
        assert data_offsets(out) == [start(n) for n in range(10)]


class TestRecoveryEnd:
    def test_recovery_end_reports_the_bytes_lost(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # RFC 7661 4.4.1: at the end of recovery the controller hears R, the bytes deemed
        # lost during it (window validation bases cwnd on what was really delivered).
        conn = established()
        reported: list[int] = []
        on_recovery_end = conn.cc.on_recovery_end

        def record(*, now: float, lost: int = 0) -> None:
            reported.append(lost)
            on_recovery_end(now=now, lost=lost)

        route_method(monkeypatch, conn.cc, "on_recovery_end", record)
        send(conn, 10, T_EST)
        ack(conn, start(0), T_EST + 0.5, (start(1), start(4)), (start(5), start(10)))
        assert conn.in_recovery
        ack(conn, start(10), T_EST + 1.0)
        assert not conn.in_recovery
        assert reported == [2 * MSS]


class TestDeliveryRate:
    def test_rate_sample_of_a_retransmission_counts_from_its_resend(self) -> None:
        # The delivery rate is the data delivered since the acknowledged segment left over
        # the time since. Segment 9 is lost, 0-8 are acknowledged, 9 is resent at the RTO
        # and acknowledged 0.5 s later: one segment in 0.5 s, not ten.
        conn = established()
        send(conn, 10, T_EST)
        ack(conn, start(9), T_EST + 0.5)
        t = conn.next_timer() or 0.0
        conn.handle_timer(t)
        assert data_offsets(conn.segments_to_send(t)) == [start(9)]
        ack(conn, start(10), t + 0.5)
        assert conn.delivery_rate == pytest.approx(MSS / 0.5)


class TestUndo:
    def recovered(self) -> tuple[Connection, int, float]:
        """Segment 0 of 10 lost: SACKs of 1-3 start recovery, 0 is resent and the ACK of
        all 10 ends it. Returns the connection, ssthresh after the reduction, the time."""
        conn = established()
        send(conn, 10, T_EST)
        out = ack(conn, start(0), T_EST + 0.5, (start(1), start(4)))
        assert conn.stats.fast_retransmits == 1
        assert data_offsets(out)[:1] == [start(0)]
        ssthresh = conn.cc.ssthresh
        ack(conn, start(10), T_EST + 1.0)
        assert not conn.in_recovery
        return conn, ssthresh, T_EST + 1.0

    def test_dsack_for_the_retransmission_undoes_the_response(self) -> None:
        # RFC 3708 3 / RFC 2883 5: the D-SACK says the retransmission was a duplicate,
        # and it was the only retransmission of the episode: the response was spurious.
        conn, ssthresh, t = self.recovered()
        ack(conn, start(10), t + 0.01, (start(0), start(1)))
        assert conn.stats.undos == 1
        assert conn.cc.ssthresh > ssthresh

    def test_dsack_for_a_duplicated_original_does_not_undo(self) -> None:
        # RFC 3708 3: only D-SACKs for the retransmissions of the episode count; segment 5
        # was never resent, its D-SACK says the network duplicated it.
        conn, ssthresh, t = self.recovered()
        ack(conn, start(10), t + 0.01, (start(5), start(6)))
        assert conn.stats.dsacks_received == 1
        assert (conn.stats.undos, conn.cc.ssthresh) == (0, ssthresh)

    def test_every_retransmission_must_be_reported_a_duplicate(self) -> None:
        # RFC 3708 3: the response was spurious only if all its retransmissions were.
        conn = established()
        send(conn, 10, T_EST)
        out = ack(conn, start(0), T_EST + 0.5, (start(1), start(2)), (start(3), start(6)))
        assert data_offsets(out)[:2] == [start(0), start(2)]
        ssthresh = conn.cc.ssthresh
        ack(conn, start(10), T_EST + 1.0)
        ack(conn, start(10), T_EST + 1.01, (start(0), start(1)))
        assert (conn.stats.undos, conn.cc.ssthresh) == (0, ssthresh)
        ack(conn, start(10), T_EST + 1.02, (start(2), start(3)))
        assert conn.stats.undos == 1
        assert conn.cc.ssthresh > ssthresh

    def test_dsack_after_the_episode_is_over_does_not_undo(self) -> None:
        # Once SND.UNA passes the data sent after recovery ended, a duplicate of the
        # retransmission would have been reported already: a D-SACK now is about
        # something else (the network duplicating an old segment) and undoes nothing.
        conn, ssthresh, t = self.recovered()
        send(conn, 2, t)
        ack(conn, start(12), t + 0.5)
        ack(conn, start(12), t + 5.0, (start(0), start(1)))
        assert (conn.stats.undos, conn.cc.ssthresh) == (0, ssthresh)


class TestTailLossProbe:
    def probe(self) -> tuple[Connection, float]:
        """Two segments out at T_EST; the PTO (2 SRTT) fires and resends the second."""
        conn = established(TLP_CONFIG)
        send(conn, 2, T_EST)
        t = T_EST + 2 * 0.5
        assert conn.next_timer() == t
        conn.handle_timer(t)
        assert data_offsets(conn.segments_to_send(t)) == [start(1)]
        assert conn.stats.tlp_probes == 1
        return conn, t

    def test_ack_at_the_probes_end_then_its_dsack_is_no_loss(self) -> None:
        # RFC 8985 7.4.2: the probe repaired a loss only if the ACK passes TLP.end_seq
        # (strictly); an ACK at TLP.end_seq followed by a D-SACK for the probe says that
        # both the original and the probe arrived: no congestion response.
        conn, t = self.probe()
        ssthresh, cwnd = conn.cc.ssthresh, conn.cc.cwnd
        ack(conn, start(2), t + 0.4)
        assert conn.cc.ssthresh == ssthresh
        ack(conn, start(2), t + 0.5, (start(1), start(2)))
        assert conn.stats.dsacks_received == 1
        assert (conn.cc.ssthresh, conn.stats.tlp_recoveries) == (ssthresh, 0)
        assert conn.cc.cwnd >= cwnd
        # The episode is over: the next flight is not judged by this probe.
        send(conn, 1, t + 0.6)
        ack(conn, start(3), t + 1.1)
        assert (conn.cc.ssthresh, conn.stats.tlp_recoveries) == (ssthresh, 0)

    def test_probe_that_repaired_a_loss_is_answered_when_the_ack_passes_its_end(self) -> None:
        # RFC 8985 7.4.2: no D-SACK for the probe and an ACK beyond TLP.end_seq: the probe
        # repaired a real loss, and congestion control responds to it.
        conn, t = self.probe()
        ssthresh = conn.cc.ssthresh
        ack(conn, start(2), t + 0.4)
        assert conn.stats.tlp_recoveries == 0
        send(conn, 1, t + 0.4)
        ack(conn, start(3), t + 0.9)
        assert conn.stats.tlp_recoveries == 1
        assert conn.cc.ssthresh < ssthresh


class TestMemory:
    def test_retransmission_log_without_sack_holds_only_what_is_in_flight(self) -> None:
        # Without SACK, RACK never runs, and it was the only reader that drained the log of
        # retransmissions: every one ever made stayed for the connection's life. Entries
        # for acknowledged (or resent again) segments now go as the ACKs arrive: the log
        # stays within twice the segments in flight, and is empty once all is acked.
        config = Config(sack=False)
        pair = HostPair(seed=3, link=LinkConfig(delay=0.02, loss=0.03), config=config)
        client, server = pair.connect()
        assert not client.sack_ok
        peak = 0

        def sample() -> bool:
            nonlocal peak
            sb = client.scoreboard
            assert len(sb.retransmitted or ()) <= 2 * len(sb)
            peak = max(peak, len(sb.retransmitted or ()))
            return False

        pair.net.add_filter(lambda now, src, dst, data: sample())
        data = random_payload(5, 1_000_000)
        assert pair.transfer(data, b"", connection=(client, server)).intact
        assert client.stats.retransmits > 10
        assert peak > 0
        # Both ends saw EOF; the ACK of the client's FIN may still be on its way.
        pair.net.run(lambda: len(client.scoreboard) == 0, timeout=60.0)
        assert not client.scoreboard.retransmitted


class TestZeroWindow:
    def test_shutdown_into_a_zero_window_waits_for_the_window(self) -> None:
        # RFC 9293 3.8.6.1: the FIN occupies sequence space and waits for window like data
        # (a conforming receiver rejects SEG.LEN 1 with RCV.WND 0). It was sent anyway,
        # every RTO resent it, each was answered by an ACK, and after max_retransmissions
        # the connection was aborted. Here the server does not read for 10 minutes.
        window = 65535  # no window scaling: the window is exactly this
        pair = HostPair(
            seed=4,
            link=LinkConfig(delay=0.05),
            client_config=Config(max_retransmissions=3, nodelay=True),
            server_config=Config(receive_buffer_size=window),
        )
        client, server = pair.connect()
        data = random_payload(6, window)
        assert client.send(data) == window
        pair.net.run(lambda: client.bytes_in_flight == 0 and client.snd_wnd == 0, timeout=10.0)
        client.shutdown(pair.now)
        pair.net.run_for(600.0)
        assert client.error is None
        assert client.state is State.FIN_WAIT_1
        received = bytearray()

        def read() -> bool:
            received.extend(server.receive(1 << 20))
            return server.at_eof and client.state is State.FIN_WAIT_2

        pair.net.run(read, timeout=120.0)
        assert received == data

    def test_rtos_answered_while_the_window_is_zero_do_not_count(self) -> None:
        # The peer answers every retransmission with an ACK that shrinks the window to 0
        # (a receiver may shrink it, RFC 9293 3.8.6.2.2 only asks it not to). Each RTO's
        # retransmission is then a window probe that was answered: as in Linux, the
        # connection lives on while the peer keeps answering (RFC 9293 3.8.6.1).
        conn = established(replace(CONFIG, max_retransmissions=2))
        send(conn, 1, T_EST)
        t = T_EST
        for _ in range(5):
            t = conn.next_timer() or 0.0
            conn.handle_timer(t)
            assert data_offsets(conn.segments_to_send(t)) == [start(0)]
            conn.receive_segment(peer(ACK, 1, start(0), window=0), t + 0.5)
            conn.segments_to_send(t + 0.5)
        assert conn.error is None
        assert conn.state is State.ESTABLISHED
        # The peer takes the data at last.
        conn.receive_segment(peer(ACK, 1, start(1)), t + 0.6)
        assert conn.bytes_in_flight == 0 and conn.error is None

    def test_fin_waits_for_window_and_is_probed_for(self) -> None:
        # RFC 9293 3.8.6.1: with the peer's window closed, shutdown() sends no FIN; the
        # persist timer probes (<SEQ=SND.UNA-1>) instead, and probes the peer answers never
        # exhaust max_retransmissions. The FIN goes once the window opens.
        conn = established(replace(CONFIG, max_retransmissions=2))
        send(conn, 1, T_EST)
        conn.receive_segment(peer(ACK, 1, start(1), window=0), T_EST + 0.5)
        conn.shutdown(T_EST + 0.5)
        assert conn.segments_to_send(T_EST + 0.5) == []
        t = T_EST + 0.5
        for _ in range(6):
            t = conn.next_timer() or 0.0
            conn.handle_timer(t)
            (probe,) = conn.segments_to_send(t)
            assert (probe.flags, probe.seq, probe.payload) == (ACK, L(start(1) - 1), b"")
            conn.receive_segment(peer(ACK, 1, start(1), window=0), t + 0.5)
            assert conn.segments_to_send(t + 0.5) == []
        assert conn.state is State.FIN_WAIT_1 and conn.error is None
        conn.receive_segment(peer(ACK, 1, start(1)), t + 1.0)
        (fin,) = conn.segments_to_send(t + 1.0)
        assert (fin.flags, fin.seq) == (ACK | FIN, L(start(1)))


class Hole:
    """Drops every transmission of the client's ``nth`` data segment until ``open``."""

    def __init__(self, nth: int) -> None:
        self.nth = nth
        self.seen = 0
        self.seq: int | None = None
        self.open = False

    def __call__(self, now: float, src: tuple[str, int], dst: tuple[str, int], data: bytes) -> bool:
        if src != CLIENT_ADDR or self.open:
            return False
        seg = decode_untrusted(data)
        if not seg.payload:
            return False
        if self.seq is None:
            self.seen += 1
            if self.seen == self.nth:
                self.seq = seg.seq
        return seg.seq == self.seq


class TestReneging:
    def test_data_a_reneging_receiver_dropped_is_sent_again_after_the_timeout(self) -> None:
        # RFC 2018 8: SACKed data stays queued until cumulatively acknowledged, and after a
        # timeout the sender treats its SACK information as stale and resends from
        # SND.UNA, SACKed segments included. Here the receiver drops its out-of-order
        # queue (as Linux and FreeBSD may under memory pressure) while the sender holds
        # those bytes as SACKed.
        pair = HostPair(seed=1, link=LinkConfig(delay=0.05))
        hole = Hole(20)
        pair.net.add_filter(hole)
        client, server = pair.connect()
        data = random_payload(9, 300_000)
        sent = client.send(data)
        pair.net.run(lambda: server.rcvbuf.ooo_bytes >= 20 * client.effective_mss, timeout=30.0)
        assert client.scoreboard.sacked_bytes > 0
        assert server.rcvbuf.renege() >= 20 * client.effective_mss
        hole.open = True
        received = bytearray()

        def delivered() -> bool:
            nonlocal sent
            if sent < len(data):
                sent += client.send(data[sent:])
            received.extend(server.receive(1 << 20))
            if client.error is not None:
                raise client.error
            return len(received) == len(data)

        pair.net.run(delivered, timeout=120.0)
        assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
        assert client.stats.rto_expiries >= 1
