"""Memory a peer can make a connection hold is bounded by its buffers, counted in real memory
(payload plus per-segment and per-block bookkeeping), whatever the peer does: claim a tiny
MSS, send many tiny out-of-order segments, or keep sending to an application that never
reads. The bounds are checked on ``limits.connection_memory`` and with tracemalloc."""

from __future__ import annotations

import random
import tracemalloc

from _factories import CONFIG, L, established, peer

from utcp import Config
from utcp._buffers import BLOCK_OVERHEAD
from utcp._config import DEFAULT_PEER_MSS
from utcp._connection import Connection
from utcp._limits import SEGMENT_OVERHEAD, connection_memory
from utcp._wire import ACK
from utcp.testing import SERVER_ADDR, HostPair, LinkConfig, random_payload


def traced_growth(fn: object) -> int:
    """Bytes still allocated after ``fn()`` that were not before it."""
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        fn()  # type: ignore[operator]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(s.size_diff for s in after.compare_to(before, "filename"))


def test_many_tiny_out_of_order_segments_stay_within_the_receive_buffer() -> None:
    # A peer that claims MSS 64 and sends 1-byte segments with a hole before each: every
    # byte is a block of its own. RFC 2018 8 lets us renege on the highest ones.
    cap = CONFIG.receive_buffer_size
    conn = established(mss=64)
    holder: list[int] = []

    def flood() -> None:
        for i in range(4_000):  # the limit holds about 1,540 one-byte blocks
            conn.receive_segment(peer(ACK, 3 + 2 * i, 1, b"x"), 1.0)
            if i % 64 == 0:
                conn.segments_to_send(1.0)
        holder.append(conn.rcvbuf.ooo_memory)

    grown = traced_growth(flood)
    limit = cap + (cap // DEFAULT_PEER_MSS + 1) * BLOCK_OVERHEAD
    assert conn.rcvbuf.memory_limit == limit  # a claimed tiny MSS does not raise it
    assert holder[0] <= limit and conn.rcvbuf.reneged_bytes > 0
    assert grown <= 2 * limit
    assert connection_memory(conn) <= limit + 4096


def test_an_application_that_never_reads_holds_at_most_its_receive_buffer() -> None:
    rcv = 64 * 1024
    pair = HostPair(seed=7, server_config=Config(receive_buffer_size=rcv))
    client, server = pair.connect()
    sent = 0
    for _ in range(40):
        sent += client.send(b"y" * 65536)
        pair.net.run_for(0.5)
    assert server.readable == rcv and sent >= rcv  # the window closed at the buffer's size
    assert server.rcvbuf.ooo_bytes == 0
    assert connection_memory(server) <= rcv + 4096
    # Nobody took the connection's events either: they do not pile up per segment.
    assert len(server._events) <= 8
    assert pair.server.memory_charged() >= connection_memory(server)
    assert pair.server.accept(SERVER_ADDR[1]) is None  # already accepted by connect()


def test_a_tiny_mss_does_not_multiply_the_send_sides_bookkeeping() -> None:
    # A peer claiming MSS 64 turns 1 MiB of send buffer into 16384 segments in flight, each
    # with ~150 bytes of bookkeeping: the bookkeeping is held to the buffer's size.
    size = 1 << 20
    conn = established(CONFIG.replace(send_buffer_size=size, initial_window=100_000), mss=64)
    conn.send(b"z" * size)

    def push() -> None:
        t = 1.0
        for _ in range(60):
            conn.segments_to_send(t)
            t += 0.001

    grown = traced_growth(push)
    assert len(conn.scoreboard) <= size // SEGMENT_OVERHEAD
    assert len(conn.scoreboard) * conn.effective_mss >= size // 4  # still sending
    assert grown <= size + 256 * 1024
    assert connection_memory(conn) <= 2 * size + 4096
    # Acknowledging frees room for more segments.
    conn.receive_segment(peer(ACK, 1, 1 + 64 * 100), 1.2)
    before = conn.snd_nxt
    conn.segments_to_send(1.2)
    assert conn.snd_nxt != before and conn.snd_una == L(1 + 64 * 100)


def test_forged_sack_blocks_grow_no_state() -> None:
    # RFC 2018 / RFC 6675: blocks outside (SND.UNA, SND.NXT] are ignored; D-SACKs for
    # data never retransmitted change nothing: 8,000 forged blocks leave no trace.
    conn = established()
    conn.send(b"w" * 100 * 1400)
    conn.segments_to_send(1.0)
    in_flight = len(conn.scoreboard)
    rng = random.Random(8)

    def forge() -> None:
        for i in range(2_000):
            blocks = []
            for _ in range(4):
                lo = rng.randrange(-(2**20), 2**21)
                blocks.append((L(lo), L(lo + rng.randrange(1, 5000))))
            conn.receive_segment(peer(ACK, 1, 1, sack_blocks=tuple(blocks)), 1.0 + i * 1e-5)
            if i % 100 == 0:
                conn.segments_to_send(1.0 + i * 1e-5)

    grown = traced_growth(forge)
    assert conn.snd_una == L(1) and len(conn.scoreboard) >= in_flight
    assert len(conn.scoreboard) <= in_flight + 200  # at most what the window let out since
    assert grown <= 256 * 1024


def lazy_queues(conn: Connection) -> dict[str, object]:
    """The per-connection deques that exist only while they hold something."""
    sb = conn.scoreboard
    return {
        "receive queue": conn.rcvbuf.ready._chunks,
        "lost queue": sb._lost_queue,
        "retransmission log": sb.retransmitted,
    }


def test_a_connection_back_to_idle_holds_no_deque_and_no_instance_dict() -> None:
    # bench/README.md "Scale": a server's idle connections cost what their fixed state
    # costs. A deque costs 768 bytes even empty and an instance __dict__ about 3 kB for the
    # Connection's 92 fields: the connection has slots, the small queues (events, send
    # chunks, pipeACK samples) are lists, and the queues of received data, losses and
    # retransmissions are deques created when first needed and dropped once empty. A lossy
    # transfer both ways fills each of them on the way.
    pair = HostPair(seed=3, link=LinkConfig(delay=0.01, loss=0.05))
    client, server = pair.connect()
    for conn in (client, server):
        assert not hasattr(conn, "__dict__") and not hasattr(conn.cc, "__dict__")
    seen: dict[str, bool] = {}

    def watch(now: float, src: object, dst: object, data: bytes) -> bool:
        for conn in (client, server):
            for name, queue in lazy_queues(conn).items():
                seen[name] = seen.get(name, False) or bool(queue)
        return False

    pair.net.add_filter(watch)
    data = random_payload(11, 400_000)
    result = pair.transfer(data, data, connection=(client, server))
    assert result.intact and client.stats.retransmits > 0 and server.stats.retransmits > 0
    assert seen == dict.fromkeys(seen, True) and len(seen) == 3  # each held something
    pair.net.run_for(5.0)
    for conn in (client, server):
        assert len(conn.scoreboard) == 0 and conn.readable == 0  # idle
        assert lazy_queues(conn) == dict.fromkeys(lazy_queues(conn))  # all None
        small = (conn._events, conn.sndbuf._chunks, conn.cc.cwv._samples)
        assert all(type(queue) is list for queue in small)
