"""32-bit sequence number arithmetic (RFC 9293 3.4, RFC 1982 serial number arithmetic).

Sequence numbers live in a 32-bit circle; comparisons are only meaningful between numbers
less than 2**31 apart. Every comparison in the core goes through these helpers so that a
connection whose ISN sits near 2**32 behaves exactly like one starting at 0.
"""

from __future__ import annotations

import hashlib

MOD = 1 << 32
MASK = MOD - 1
HALF = 1 << 31


def seq_add(a: int, n: int) -> int:
    """``a + n`` on the 32-bit circle."""
    return (a + n) & MASK


def seq_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` in the range [-2**31, 2**31)."""
    d = (a - b) & MASK
    return d - MOD if d >= HALF else d


def seq_lt(a: int, b: int) -> bool:
    # RFC 9293 3.4: "<" means less than, modulo 2**32.
    return a != b and ((b - a) & MASK) < HALF


def seq_le(a: int, b: int) -> bool:
    return a == b or ((b - a) & MASK) < HALF


def seq_gt(a: int, b: int) -> bool:
    return seq_lt(b, a)


def seq_ge(a: int, b: int) -> bool:
    return seq_le(b, a)


def seq_in(x: int, lo: int, hi: int) -> bool:
    """``lo <= x < hi`` on the circle (RFC 9293 3.10.7.4 window tests)."""
    return ((x - lo) & MASK) < ((hi - lo) & MASK)


def seq_max(a: int, b: int) -> int:
    return b if seq_lt(a, b) else a


def seq_min(a: int, b: int) -> int:
    return a if seq_lt(a, b) else b


def rfc6528_isn(key: bytes, conn_id: bytes, now: float) -> int:
    """RFC 6528 3: ISN = M + F(localip, localport, remoteip, remoteport, secretkey), with M
    a 4-microsecond timer and F a keyed hash (BLAKE2s) of the connection identity."""
    f = hashlib.blake2s(conn_id, key=key[:32], digest_size=4).digest()
    m = int(now * 250_000)
    return (m + int.from_bytes(f, "big")) & MASK
