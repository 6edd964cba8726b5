"""TCP Fast Open between two hosts over the simulated network, on the virtual clock."""

from __future__ import annotations

import hashlib

from utcp._config import Config
from utcp._connection import Connection
from utcp.testing import SERVER_ADDR, HostPair, LinkConfig, random_payload

ONE_WAY = 0.05  # 100 ms RTT
CLIENT_CONFIG = Config(fastopen_connect=True, pacing=False)
SERVER_CONFIG = Config(fastopen_queue=16, pacing=False)


def exchange(pair: HostPair, request: bytes, size: int) -> tuple[float, bytes, bytes, Connection]:
    """One connection: the client sends ``request`` (queued before the SYN leaves), the
    server answers ``size`` bytes derived from it; returns the time until the client holds
    the whole answer, what each side received and the client's connection. Both ends close
    afterwards."""
    start = pair.now
    client = pair.client.connect(SERVER_ADDR, start)
    client.send(request)
    answer = random_payload(len(request), size)
    state: dict[str, object] = {"server": None, "got": b"", "req": b"", "sent": 0}

    def answered() -> bool:
        server = state["server"]
        if server is None:
            server = state["server"] = pair.server.accept(SERVER_ADDR[1])
        if isinstance(server, Connection):
            while server.readable:
                state["req"] = bytes(state["req"]) + server.receive()  # type: ignore[arg-type]
            sent = int(state["sent"])  # type: ignore[call-overload]
            if len(bytes(state["req"])) == len(request) and sent < size:  # type: ignore[arg-type]
                state["sent"] = sent + server.send(answer[sent:])
        while client.readable:
            state["got"] = bytes(state["got"]) + client.receive()  # type: ignore[arg-type]
        for conn in (client, server):
            if isinstance(conn, Connection) and conn.error is not None:
                raise conn.error
        return len(bytes(state["got"])) == size  # type: ignore[arg-type]

    pair.net.run(answered, timeout=600.0)
    elapsed = pair.now - start
    server = state["server"]
    assert isinstance(server, Connection)
    client.close(pair.now)
    server.close(pair.now)
    pair.run_until_closed((client, server))
    return elapsed, bytes(state["req"]), bytes(state["got"]), client  # type: ignore[arg-type]


def pair(seed: int, loss: float = 0.0) -> HostPair:
    return HostPair(
        seed=seed,
        link=LinkConfig(delay=ONE_WAY, loss=loss),
        client_config=CLIENT_CONFIG,
        server_config=SERVER_CONFIG,
    )


def test_second_connection_is_answered_one_rtt_sooner() -> None:
    # RFC 7413 3: the first connection fetches the cookie (2 RTT until the answer), the
    # second carries the request in its SYN and is answered by the SYN-ACK's flight (1 RTT).
    p = pair(1)
    request = b"GET /small HTTP/1.1\r\n\r\n"
    first, req1, got1, c1 = exchange(p, request, 1000)
    second, req2, got2, c2 = exchange(p, request, 1000)
    assert (c1.stats.fastopen_syn_data_sent, c2.stats.fastopen_syn_data_acked) == (0, 1)
    assert req1 == req2 == request
    assert got1 == got2 == random_payload(len(request), 1000)
    assert abs(first - 4 * ONE_WAY) < 1e-9
    assert abs(second - 2 * ONE_WAY) < 1e-9
    assert abs((first - second) - 2 * ONE_WAY) < 1e-9  # exactly one RTT saved


def test_without_fast_open_both_connections_take_two_rtts() -> None:
    p = HostPair(seed=1, link=LinkConfig(delay=ONE_WAY), config=Config(pacing=False))
    times = [exchange(p, b"GET / HTTP/1.1\r\n\r\n", 1000)[0] for _ in range(2)]
    assert all(abs(t - 4 * ONE_WAY) < 1e-9 for t in times)


def test_every_exchange_completes_intact_with_five_percent_loss() -> None:
    # Lost SYN-data, lost SYN-ACKs, lost answers: the fallbacks (RFC 7413 4.1.3.1) and the
    # ordinary retransmissions deliver every byte, whatever Fast Open did.
    used = fell_back = 0
    for seed in range(6):
        p = pair(seed, loss=0.05)
        for i in range(8):
            request = random_payload(1000 * seed + i, 300 + 97 * i)
            size = 20_000 + 1111 * i
            _, got_req, got, client = exchange(p, request, size)
            used += client.stats.fastopen_syn_data_acked
            fell_back += client.stats.fastopen_fallbacks
            assert hashlib.sha256(got_req).digest() == hashlib.sha256(request).digest(), seed
            want = random_payload(len(request), size)
            assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest(), seed
    assert used > 0 and fell_back > 0  # both paths ran
