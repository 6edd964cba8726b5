"""NewReno (RFC 5681 / RFC 6582 with RFC 3465 byte counting) and the shared interface."""

from __future__ import annotations

import ast
import pathlib

import pytest

import utcp
from utcp import _congestion
from utcp._congestion.base import INITIAL_SSTHRESH
from utcp._congestion.cubic import Cubic
from utcp._congestion.newreno import NewReno

MSS = 1000


def newreno(initial_window: int = 10, mss: int = MSS) -> NewReno:
    return NewReno(mss=mss, initial_window=initial_window)


@pytest.mark.parametrize(
    ("mss", "iw", "expected"),
    [
        (1000, 10, 10_000),  # RFC 6928 2: min(10 * 1000, max(2000, 14600))
        (1460, 10, 14_600),
        (1500, 10, 14_600),  # the 14600-byte cap binds
        (1000, 4, 4000),  # scaled cap max(2000, 5840)
        (9000, 10, 18_000),  # max(2 * MSS, 14600) with jumbo segments
    ],
)
def test_initial_window(mss: int, iw: int, expected: int) -> None:
    cc = newreno(iw, mss)
    assert cc.cwnd == expected
    assert cc.ssthresh == INITIAL_SSTHRESH  # RFC 5681 3.1: arbitrarily high


def test_slow_start_counts_bytes() -> None:
    cc = newreno()
    cc.on_ack(now=1.0, acked=3 * MSS, rtt=0.1, in_flight=10 * MSS)  # old-style call
    assert cc.cwnd == 13 * MSS
    cc.ssthresh = 14 * MSS
    cc.on_ack(now=1.1, acked=5 * MSS, rtt=0.1, in_flight=13 * MSS)
    # RFC 3465 2.3: at most 2 SMSS past ssthresh: min(18000, max(14000, 15000)).
    assert cc.cwnd == 15 * MSS


def test_congestion_avoidance_one_mss_per_window() -> None:
    cc = newreno()
    cc.cwnd, cc.ssthresh = 20 * MSS, 10 * MSS
    cc.on_ack(now=1.0, acked=20 * MSS - 1, rtt=0.1, in_flight=20 * MSS)
    assert cc.cwnd == 20 * MSS
    cc.on_ack(now=1.1, acked=1, rtt=0.1, in_flight=20 * MSS)
    # RFC 5681 3.1 (eq. 3) with byte counting: a full cwnd acknowledged adds one SMSS.
    assert cc.cwnd == 21 * MSS


def test_loss_and_recovery_end() -> None:
    cc = newreno()
    cc.cwnd = 30 * MSS
    cc.on_loss(now=1.0, in_flight=20 * MSS)
    # RFC 5681 3.2 (eq. 4): ssthresh = max(FlightSize / 2, 2 SMSS) = 10 MSS.
    assert (cc.ssthresh, cc.cwnd) == (10 * MSS, 10 * MSS)
    cc.on_recovery_end(now=1.5)
    assert cc.cwnd == 10 * MSS  # RFC 6582 3.2 (3): deflate to ssthresh
    cc.on_loss(now=2.0, in_flight=3 * MSS)
    assert cc.ssthresh == 2 * MSS  # floor of 2 SMSS


def test_rto() -> None:
    cc = newreno()
    cc.cwnd = 30 * MSS
    cc.on_rto(now=1.0, in_flight=30 * MSS)
    # RFC 5681 3.1 (eq. 4) and the loss window LW = 1 SMSS.
    assert (cc.ssthresh, cc.cwnd) == (15 * MSS, MSS)


def test_recovery_end_outside_recovery_is_ignored() -> None:
    cc = newreno()
    cc.on_recovery_end(now=1.0)
    assert cc.cwnd == 10 * MSS


def test_undo_restores_and_ends_recovery() -> None:
    cc = newreno()
    cc.cwnd, cc.ssthresh = 30 * MSS, 20 * MSS
    cc.on_ack(now=1.0, acked=7 * MSS, rtt=0.1, in_flight=30 * MSS)  # 7000 bytes credit
    saved = cc.snapshot()
    cc.on_loss(now=1.1, in_flight=30 * MSS)
    assert cc.cwnd == 15 * MSS
    cc.undo(saved)
    assert (cc.cwnd, cc.ssthresh) == (30 * MSS, 20 * MSS)
    cc.on_ack(now=1.2, acked=23 * MSS, rtt=0.1, in_flight=30 * MSS)
    assert cc.cwnd == 31 * MSS  # the 7000-byte credit was restored too
    cc.on_recovery_end(now=1.3)  # the undone recovery does not deflate cwnd
    assert cc.cwnd == 31 * MSS


def test_undo_keeps_a_window_that_already_recovered() -> None:
    cc = newreno()
    cc.cwnd = 10 * MSS
    saved = cc.snapshot()
    cc.on_loss(now=1.0, in_flight=10 * MSS)
    cc.cwnd = 12 * MSS  # grown past the saved cwnd meanwhile
    cc.undo(saved)
    # RFC 9438 4.9.2: restore only while cwnd is below the saved value.
    assert (cc.cwnd, cc.ssthresh) == (12 * MSS, 5 * MSS)


def test_undo_checks_its_argument() -> None:
    cc = newreno()
    with pytest.raises(TypeError):
        cc.undo(object())
    other = _congestion.create("cubic", mss=MSS, initial_window=10)
    saved = other.snapshot()
    cc.on_loss(now=1.0, in_flight=10 * MSS)
    cc.undo(saved)  # another algorithm's snapshot (before a switch) is ignored
    assert cc.cwnd == 5 * MSS


def test_smoothed_and_minimum_rtt() -> None:
    cc = newreno()
    cc.on_ack(now=1.0, acked=MSS, rtt=0.100, in_flight=MSS)
    cc.on_ack(now=1.1, acked=MSS, rtt=None, in_flight=MSS)
    cc.on_ack(now=1.2, acked=MSS, rtt=0.200, in_flight=MSS)
    # RFC 6298 (2.2) SRTT = R; (2.3) SRTT = 7/8 * 0.1 + 1/8 * 0.2 = 0.1125.
    assert cc.srtt == pytest.approx(0.1125)
    assert cc.min_rtt == 0.100


def test_registry() -> None:
    assert _congestion.available() == ["cubic", "ledbat", "newreno", "reno"]
    assert _congestion.DEFAULT == "cubic"
    for name, cls in [("cubic", "Cubic"), ("LEDBAT", "Ledbat"), ("reno", "NewReno")]:
        cc = _congestion.create(name, mss=MSS, initial_window=10)
        assert type(cc).__name__ == cls
    assert _congestion.create("reno", mss=MSS, initial_window=10).name == "newreno"
    # RFC 9406 4.3: HyStart++'s L is 8 segments unpaced, infinity when paced.
    unpaced = _congestion.create("cubic", mss=MSS, initial_window=10)
    paced = _congestion.create("cubic", mss=MSS, initial_window=10, paced=True)
    assert isinstance(unpaced, Cubic) and isinstance(paced, Cubic)
    assert unpaced.hystart is not None and unpaced.hystart.limit == 8
    assert paced.hystart is not None and paced.hystart.limit is None
    with pytest.raises(ValueError, match="available: cubic, ledbat, newreno, reno"):
        _congestion.create("vegas", mss=MSS, initial_window=10)


FORBIDDEN = {"trio", "anyio", "socket", "time", "random", "asyncio", "os", "datetime"}


def test_congestion_package_is_sans_io() -> None:
    """Every module of the package, including ones test_purity does not list yet."""
    root = pathlib.Path(utcp.__file__).parent / "_congestion"
    files = sorted(root.glob("*.py"))
    assert {f.name for f in files} >= {"cubic.py", "cwv.py", "hystart.py", "ledbat.py"}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = {node.module}
            else:
                continue
            assert not {n for n in names if n.split(".")[0] in FORBIDDEN}, path.name
