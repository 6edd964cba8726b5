"""RFC 7661 congestion window validation, shared by every controller (``cwv.py``).

MSS is 1000 bytes and IW 10 MSS. A ``Sender`` drives one controller with one ACK per round
that acknowledges everything outstanding, so each ACK after the first closes a pipeACK
round whose sample is exactly the bytes it acknowledged.
"""

from __future__ import annotations

import pytest

from utcp import _congestion
from utcp._congestion.base import CongestionController
from utcp._congestion.cubic import Cubic

MSS = 1000


class Sender:
    def __init__(self, cc: CongestionController, now: float = 0.0) -> None:
        self.cc = cc
        self.una = self.nxt = 1
        self.now = now

    def send(self, n: int) -> None:
        self.nxt += n
        self.cc.on_sent(now=self.now, sent=n, in_flight=self.nxt - self.una, snd_nxt=self.nxt)

    def ack_all(self, dt: float, *, app_limited: bool = True, rtt: float = 0.1) -> None:
        self.now += dt
        acked, self.una = self.nxt - self.una, self.nxt
        self.cc.on_ack(
            now=self.now,
            acked=acked,
            rtt=rtt,
            in_flight=acked,
            snd_una=self.una,
            snd_nxt=self.nxt,
            app_limited=app_limited,
        )

    def rounds(
        self, n: int, per_round: int, dt: float, *, app_limited: bool = True, rtt: float = 0.1
    ) -> None:
        for _ in range(n):
            self.send(per_round)
            self.ack_all(dt, app_limited=app_limited, rtt=rtt)


def in_avoidance(name: str) -> CongestionController:
    cc = _congestion.create(name, mss=MSS, initial_window=10)
    cc.cwnd, cc.ssthresh = 100 * MSS, 50 * MSS
    return cc


@pytest.mark.parametrize("name", ["newreno", "cubic", "ledbat"])
def test_no_growth_while_app_limited(name: str) -> None:
    cc = in_avoidance(name)
    cc.on_ack(now=1.0, acked=50 * MSS, rtt=0.1, in_flight=100 * MSS, app_limited=True)
    # RFC 7661 4.4 / RFC 9438 5.8: cwnd does not grow while the application limits.
    assert cc.cwnd == 100 * MSS
    cc.on_ack(now=2.0, acked=100 * MSS, rtt=0.1, in_flight=100 * MSS, app_limited=False)
    assert cc.cwnd > 100 * MSS  # the same ACK from a cwnd-limited sender grows it


@pytest.mark.parametrize("name", ["newreno", "cubic"])
def test_no_growth_in_slow_start_while_app_limited(name: str) -> None:
    cc = _congestion.create(name, mss=MSS, initial_window=10)
    cc.on_ack(now=1.0, acked=5 * MSS, rtt=0.1, in_flight=6 * MSS, app_limited=True)
    assert cc.cwnd == 10 * MSS


def test_pipeack_and_phase() -> None:
    cc = in_avoidance("newreno")
    s = Sender(cc)
    s.rounds(1, 10 * MSS, 0.1)
    # RFC 7661 4.1: no sample yet, pipeACK undefined: the validated phase.
    assert cc.cwv.pipe_ack is None and cc.cwv.validated
    s.rounds(1, 10 * MSS, 0.1)
    # RFC 7661 4.2/4.3: pipeACK = 10 MSS < cwnd / 2 = 50 MSS: non-validated.
    assert cc.cwv.pipe_ack == 10 * MSS and not cc.cwv.validated
    s.rounds(1, 30 * MSS, 0.1)
    s.rounds(1, 10 * MSS, 0.1, app_limited=False)
    # pipeACK is the largest sample in the PSP; a cwnd-limited ACK validates regardless.
    assert cc.cwv.pipe_ack == 30 * MSS and cc.cwv.validated
    # PSP = max(3 * SRTT, 1 s) = 1 s: the 30 MSS sample (t = 0.3) ages out after t = 1.3.
    s.rounds(9, 10 * MSS, 0.1)
    assert s.now == pytest.approx(1.3) and cc.cwv.pipe_ack == 30 * MSS
    s.rounds(1, 10 * MSS, 0.1)
    assert cc.cwv.pipe_ack == 10 * MSS
    s.rounds(1, 50 * MSS, 0.1)
    assert cc.cwv.validated  # 2 * 50 MSS >= cwnd = 100 MSS


def test_pipeack_sampling_period_follows_a_long_rtt() -> None:
    cc = in_avoidance("newreno")
    s = Sender(cc)
    s.rounds(1, 10 * MSS, 1.0, rtt=1.0)
    s.rounds(1, 30 * MSS, 1.0, rtt=1.0)  # sample of 30 MSS at t = 2
    s.rounds(3, 10 * MSS, 1.0, rtt=1.0)  # t = 5: PSP = max(3 * 1 s, 1 s) still holds it
    assert cc.cwv.pipe_ack == 30 * MSS
    s.rounds(1, 10 * MSS, 1.0, rtt=1.0)  # t = 6: aged out
    assert cc.cwv.pipe_ack == 10 * MSS


def test_rate_limited_sender_loses_its_window_every_five_minutes() -> None:
    cc = in_avoidance("newreno")
    s = Sender(cc)
    s.rounds(1, 10 * MSS, 0.5)  # t = 0.5: validated (pipeACK undefined)
    s.rounds(599, 10 * MSS, 0.5)  # t = 300.0: 299.5 s in the NVP
    assert (cc.cwnd, cc.ssthresh) == (100 * MSS, 50 * MSS)
    s.rounds(1, 10 * MSS, 0.5)  # t = 300.5: one whole NVP
    # RFC 7661 4.4.3: ssthresh = max(ssthresh, 3/4 cwnd) = 75 MSS, cwnd = max(cwnd/2, IW).
    assert (cc.cwnd, cc.ssthresh) == (50 * MSS, 75 * MSS)
    s.rounds(600, 10 * MSS, 0.5)  # t = 600.5
    assert (cc.cwnd, cc.ssthresh) == (25 * MSS, 75 * MSS)
    s.rounds(600, 10 * MSS, 0.5)  # t = 900.5: cwnd 12.5 MSS, now 2 * pipeACK >= cwnd
    assert cc.cwnd == 12_500
    s.rounds(1200, 10 * MSS, 0.5)  # validated again: nothing more is taken away
    assert (cc.cwnd, cc.ssthresh) == (12_500, 75 * MSS)


def test_idle_sender_pays_when_it_restarts() -> None:
    cc = in_avoidance("newreno")
    s = Sender(cc)
    s.rounds(2, 100 * MSS, 0.1, app_limited=False)  # bulk, validated at t = 0.2
    assert cc.cwnd == 101 * MSS  # one RFC 5681 avoidance step on the way
    s.now = 299.2
    s.send(MSS)  # idle for 299 s: cwnd is kept (RFC 7661 replaces the RFC 5681 restart)
    assert cc.cwnd == 101 * MSS
    s.ack_all(0.1)  # a 1 MSS sample: the non-validated phase goes on
    assert not cc.cwv.validated
    s.now = 650.3
    s.send(MSS)
    # 650.1 s since the phase was last validated: two whole NVPs. RFC 7661 4.4.3 twice:
    # cwnd 101 -> 50.5 -> 25.25 MSS; ssthresh max(50, 75.75) = 75.75, max(75.75, 37.875).
    assert (cc.cwnd, cc.ssthresh) == (25_250, 75_750)


def test_loss_in_the_nvp_uses_pipeack_and_loss_flight_size() -> None:
    cc = in_avoidance("newreno")
    s = Sender(cc)
    s.rounds(3, 10 * MSS, 0.1)  # pipeACK = 10 MSS, non-validated
    cc.on_loss(now=s.now, in_flight=6 * MSS)
    assert cc.cwnd == 3 * MSS  # NewReno: FlightSize / 2
    cc.on_recovery_end(now=s.now + 0.1, lost=2 * MSS)
    # RFC 7661 4.4.1: cwnd = (max(pipeACK, LossFlightSize) - R) / 2 = (10 - 2) / 2 = 4 MSS.
    assert (cc.cwnd, cc.ssthresh) == (4 * MSS, 4 * MSS)
    assert cc.cwv.pipe_ack is None


def test_loss_in_the_validated_phase_is_the_algorithms_own() -> None:
    cc = in_avoidance("newreno")
    s = Sender(cc)
    s.rounds(3, 10 * MSS, 0.1, app_limited=False)
    cc.on_loss(now=s.now, in_flight=6 * MSS)
    cc.on_recovery_end(now=s.now + 0.1, lost=2 * MSS)
    assert (cc.cwnd, cc.ssthresh) == (3 * MSS, 3 * MSS)


def test_nvp_loss_response_floor() -> None:
    cc = in_avoidance("cubic")
    s = Sender(cc)
    s.rounds(3, 10 * MSS, 0.1)
    cc.on_loss(now=s.now, in_flight=10 * MSS)
    cc.on_recovery_end(now=s.now + 0.1, lost=9 * MSS)
    assert (cc.cwnd, cc.ssthresh) == (2 * MSS, 2 * MSS)  # (10 - 9) / 2 raised to 2 SMSS
    assert isinstance(cc, Cubic) and cc.t_epoch is None  # the curve restarts from here


def test_rto_forgets_the_measurement() -> None:
    cc = in_avoidance("newreno")
    s = Sender(cc)
    s.rounds(3, 10 * MSS, 0.1)
    assert not cc.cwv.validated
    cc.on_rto(now=s.now, in_flight=10 * MSS)
    assert cc.cwv.pipe_ack is None and cc.cwv.validated


def test_inactive_without_sequence_offsets() -> None:
    cc = in_avoidance("newreno")
    for i in range(4):  # old-style calls, ten minutes apart
        cc.on_ack(now=600.0 * i, acked=MSS, rtt=0.1, in_flight=2 * MSS, app_limited=True)
    assert not cc.cwv.active
    assert (cc.cwnd, cc.ssthresh) == (100 * MSS, 50 * MSS)


def test_undo_cancels_a_pending_nvp_response() -> None:
    cc = in_avoidance("newreno")
    s = Sender(cc)
    s.rounds(3, 10 * MSS, 0.1)
    saved = cc.snapshot()
    cc.on_loss(now=s.now, in_flight=6 * MSS)
    assert cc.cwv.loss_flight_size == 6 * MSS
    cc.undo(saved)
    assert cc.cwv.loss_flight_size is None and not cc.cwv.in_recovery
    assert cc.cwnd == 100 * MSS
