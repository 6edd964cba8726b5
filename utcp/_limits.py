"""Rate limits a host applies to answers it owes nobody in particular, and what a
connection's memory is charged (docs/HARDENING.md).

``TokenBucket`` and ``PerSourceBuckets`` bound the RSTs that answer segments for no
connection (RFC 9293 3.10.7.1), globally and per source address, so garbage cannot make the
host an amplifier or a flood cannon; ``ChallengeAckLimit`` is the host-wide bound on RFC
5961 challenge ACKs, randomised like Linux's after CVE-2016-5696. All are driven by ``now``.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._connection import Connection

# Real memory per segment in flight beyond its payload (which the send buffer holds once):
# its SentSegment, the boxed times and offsets it points to and its scoreboard slot cost
# about 152 bytes in CPython (tracemalloc), like Linux's per-skb truesize overhead.
SEGMENT_OVERHEAD = 160
# A queued event (a small frozen dataclass and its deque slot).
EVENT_OVERHEAD = 64


class TokenBucket:
    """``rate`` tokens per second, holding at most one second's worth."""

    __slots__ = ("rate", "time", "tokens")

    def __init__(self, rate: int, now: float = 0.0) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.time = now

    def take(self, now: float) -> bool:
        """Spend a token if there is one."""
        self.tokens = min(float(self.rate), self.tokens + max(0.0, now - self.time) * self.rate)
        self.time = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class PerSourceBuckets:
    """One ``TokenBucket`` per source address, at most ``max_sources`` of them: the least
    recently used is forgotten first (a forgotten source starts again with a full bucket,
    and the global bucket still bounds the total)."""

    __slots__ = ("_buckets", "max_sources", "rate")

    def __init__(self, rate: int, max_sources: int = 4096) -> None:
        self.rate = rate
        self.max_sources = max_sources
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, source: str, now: float) -> bool:
        bucket = self._buckets.pop(source, None)
        if bucket is None:
            bucket = TokenBucket(self.rate, now)
            if len(self._buckets) >= self.max_sources:
                del self._buckets[next(iter(self._buckets))]
        self._buckets[source] = bucket  # most recently used last
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)


class ChallengeAckLimit:
    """RFC 5961 7's challenge-ACK throttle over a whole host.

    CVE-2016-5696: with one global budget of exactly N per second, an off-path attacker who
    spends it and counts the challenge ACKs it gets back learns whether a connection between
    two others took some of it, then their sequence numbers. Linux (since 4.7) draws each
    second's budget at random, ``ceil(limit / 2) + random(limit)``; so does this, the draw
    being a keyed hash of the second (the core reads no random source: the host's secret
    makes it unpredictable, and a test's key makes it repeatable).
    """

    __slots__ = ("_key", "_left", "_second", "limit")

    def __init__(self, limit: int, key: bytes) -> None:
        self.limit = limit
        self._key = hashlib.blake2s(key, person=b"utcpcack").digest()
        self._second: int | None = None
        self._left = 0

    def allow(self, now: float) -> bool:
        """Whether one more challenge ACK may go out at ``now``; takes it from the budget."""
        second = int(now)
        if second != self._second:
            self._second = second
            draw = hashlib.blake2s(second.to_bytes(8, "big", signed=True), key=self._key)
            jitter = int.from_bytes(draw.digest()[:8], "big") % self.limit
            self._left = (self.limit + 1) // 2 + jitter
        if self._left <= 0:
            return False
        self._left -= 1
        return True


def challenge_ack(conn: Connection, now: float) -> None:
    """RFC 5961 7: make ``conn`` send a challenge ACK, unless its own limit
    (``Config.challenge_ack_limit`` per second) or its host's (``conn.challenge_gate``, a
    ``ChallengeAckLimit``) is spent."""
    if now - conn._challenge_window_start >= 1.0:
        conn._challenge_window_start = now
        conn._challenge_count = 0
    gate = conn.challenge_gate
    if conn._challenge_count < conn.config.challenge_ack_limit and (gate is None or gate(now)):
        conn._challenge_count += 1
        conn.stats.challenge_acks_sent += 1
        conn._ack_now = True


def connection_memory(conn: Connection) -> int:
    """What ``conn`` holds, charged in real memory: payload in its send and receive
    buffers, out-of-order blocks with their ``_buffers.BLOCK_OVERHEAD``, ``SEGMENT_OVERHEAD`` per
    segment in flight and ``EVENT_OVERHEAD`` per queued event. Each term is bounded by the
    connection's buffer sizes, whatever the peer does (docs/HARDENING.md "Memory")."""
    return (
        len(conn.sndbuf)
        + len(conn.scoreboard) * SEGMENT_OVERHEAD
        + len(conn.rcvbuf)
        + conn.rcvbuf.ooo_memory
        + len(conn._events) * EVENT_OVERHEAD
    )
