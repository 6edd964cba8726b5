"""Pair sweep over seeds (STYLE.md rule 6): a peer that vanishes behind a zero window, and a
FIN sent into a zero window. Each run ends in delivery (bytes hashed at both ends) or in the
documented error within the documented time. The default suite runs a few seeds; the
``slow`` marker runs more, with loss.
"""

from __future__ import annotations

import hashlib

import pytest

from utcp import Config
from utcp._errors import ConnectionTimedOut
from utcp._state import State
from utcp.testing import SERVER_ADDR, HostPair, LinkConfig, random_payload

FAST = [1, 2, 3]
SLOW = list(range(4, 24))
SMALL_BUFFER = 16 * 1024


def seeds(fast: list[int], slow: list[int]) -> list[object]:
    return [*fast, *(pytest.param(s, marks=pytest.mark.slow) for s in slow)]


def link(seed: int) -> LinkConfig:
    # The slow seeds add loss; the fast ones are lossless with a seed-dependent delay.
    return LinkConfig(delay=0.02 + 0.01 * (seed % 5), loss=0.02 if seed > 3 else 0.0)


def behind_zero_window(seed: int, client: Config) -> tuple[HostPair, object]:
    """The client has sent until the server's window closed (the server reads nothing);
    then the server vanishes. Returns the pair and the client connection."""
    pair = HostPair(
        seed=seed,
        link=link(seed),
        client_config=client,
        server_config=Config(receive_buffer_size=SMALL_BUFFER),
    )
    conn, server = pair.connect()
    data = random_payload(seed, 4 * SMALL_BUFFER)
    sent = conn.send(data)
    pair.net.run(lambda: conn.snd_wnd == 0 and server.readable >= SMALL_BUFFER, timeout=60.0)
    assert sent > SMALL_BUFFER and conn.state is State.ESTABLISHED
    pair.net.detach(SERVER_ADDR)  # the peer vanishes, its window closed
    return pair, conn


@pytest.mark.parametrize("seed", seeds(FAST, SLOW))
def test_peer_vanishing_behind_zero_window_fails_within_user_timeout(seed: int) -> None:
    # RFC 9293 3.8.3 / RFC 5482: with user_timeout=30 the connection fails within 30 s of
    # its first unanswered probe, which follows within one probe interval (<= max_rto).
    pair, conn = behind_zero_window(seed, Config(user_timeout=30.0))
    vanished = pair.now
    pair.net.run(lambda: conn.closed, timeout=30.0 + Config().max_rto + 5.0)
    assert isinstance(conn.error, ConnectionTimedOut), f"seed {seed}"
    assert conn.error.reason == "user timeout"
    assert pair.now - vanished <= 30.0 + Config().max_rto


@pytest.mark.parametrize("seed", seeds(FAST[:1], SLOW[:5]))
def test_peer_vanishing_behind_zero_window_fails_after_retransmission_limit(seed: int) -> None:
    # RFC 9293 3.8.3 (R2): unanswered probes count toward max_retransmissions (15), backed
    # off to max_rto (60 s): the documented error in about a quarter of an hour, not never.
    # Without a user timeout (utcp's default of 30 s would end it first, as above).
    pair, conn = behind_zero_window(seed, Config(user_timeout=None))
    vanished = pair.now
    pair.net.run(lambda: conn.closed, timeout=16 * Config().max_rto)
    assert isinstance(conn.error, ConnectionTimedOut), f"seed {seed}"
    assert conn.error.reason == "zero-window probes unanswered"
    assert pair.now - vanished <= 16 * Config().max_rto


@pytest.mark.parametrize("seed", seeds(FAST, SLOW))
def test_fin_into_zero_window_is_delivered_once_the_window_opens(seed: int) -> None:
    # RFC 9293 3.8.6.1: the FIN waits for window like data; the receiver answers every
    # probe, so a reader that comes back after 40 s gets every byte, then EOF, and both
    # ends close cleanly.
    pair = HostPair(
        seed=seed,
        link=link(seed),
        server_config=Config(receive_buffer_size=SMALL_BUFFER),
    )
    client, server = pair.connect()
    data = random_payload(seed, 4 * SMALL_BUFFER)
    sent = client.send(data)
    assert sent == len(data)
    client.shutdown(pair.now)
    pair.net.run(timeout=40.0)  # nobody reads: the window stays closed
    assert client.error is None and server.error is None, f"seed {seed}"
    assert client.stats.window_probes > 0 and client.state is State.FIN_WAIT_1
    received = bytearray()

    def delivered() -> bool:
        received.extend(server.receive(1 << 20))
        return server.at_eof

    pair.net.run(delivered, timeout=120.0)
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest(), f"seed {seed}"
    server.shutdown(pair.now)
    pair.run_until_closed((client, server))
    assert client.error is None and server.error is None
