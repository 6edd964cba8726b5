"""The sans-IO host's timer heap and touched set: the host's deadline is always the earliest
of its connections', each timer runs at its deadline and only due connections are run,
whichever way deadlines move; a connection whose core raises fails alone."""

from __future__ import annotations

import random

import pytest

from utcp import Config, State
from utcp._connection import Connection
from utcp._host import Host

ADDR = ("198.18.0.1", 40000)
ISN_KEY = b"k" * 16


def live_minimum(host: Host) -> float | None:
    deadlines = [d for c in host.connections.values() if (d := c.next_timer()) is not None]
    return min(deadlines, default=None)


@pytest.mark.parametrize("seed", range(5))
def test_host_deadline_is_the_earliest_connection_deadline(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SYNs to nowhere: each connection backs off (RFC 6298 (5.5)) and gives up at its
    # connect timeout; meanwhile the application moves user timeouts later and earlier.
    rng = random.Random(seed)
    host = Host(Config(connect_timeout=30.0), address=ADDR, isn_key=ISN_KEY)
    ran: list[Connection] = []
    original = Connection.handle_timer

    def recording(self: Connection, now: float) -> None:
        ran.append(self)
        original(self, now)

    monkeypatch.setattr(Connection, "handle_timer", recording)
    now = 0.0
    for i in range(40):
        host.connect((f"198.18.1.{i}", 443), now)
        host.next_timer()  # asked before the SYN is out, as the endpoint's drive step does
        host.datagrams_to_send(now)
        now += rng.random() * 0.2
    for _ in range(300):
        assert host.next_timer() == live_minimum(host)
        conns = list(host.connections.values())
        if conns and rng.random() < 0.3:
            conn = rng.choice(conns)
            conn.user_timeout = rng.choice([None, 0.5, 5.0, 50.0])
            conn._unacked_since = now  # as if data were in flight since now
            host.touch(conn)
            continue
        deadline = host.next_timer()
        if deadline is None:
            break
        now = deadline
        due = {c for c in conns if (d := c.next_timer()) is not None and d <= now}
        ran.clear()
        host.handle_timer(now)
        host.datagrams_to_send(now)
        assert set(ran) == due and len(ran) == len(due)  # the due ones, each once
    assert host.next_timer() is None and not host.connections  # all gave up
    assert len(host._timers) <= 2 * 40 + 64  # stale entries do not pile up


def test_a_connection_raising_in_its_timer_fails_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    host = Host(Config(), address=ADDR, isn_key=ISN_KEY)
    victim = host.connect(("198.18.1.1", 443), 0.0)
    other = host.connect(("198.18.1.2", 443), 0.0)
    host.datagrams_to_send(0.0)
    original = Connection.handle_timer
    bug = ZeroDivisionError("a bug")

    def faulty(self: Connection, now: float) -> None:
        if self is victim:
            raise bug
        original(self, now)

    monkeypatch.setattr(Connection, "handle_timer", faulty)
    deadline = host.next_timer()
    assert deadline is not None
    host.handle_timer(deadline)
    out = host.datagrams_to_send(deadline)
    assert victim.state is State.CLOSED
    assert isinstance(victim.error, ConnectionAbortedError) and victim.error.__cause__ is bug
    assert host.stats.connection_failures == 1
    assert list(host.connections.values()) == [other]
    assert other.state is State.SYN_SENT and [a for _, a in out] == [("198.18.1.2", 443)]
    assert victim in host.woken  # the endpoint wakes its stream
