"""Stateless SYN cookies (RFC 4987 3.6), laid out the way Linux lays them out.

When a listener's SYN queue is full (or one source holds too many half-open connections),
the host answers a SYN with a SYN-ACK whose ISN is a *cookie* and keeps nothing. The ACK that
completes the handshake carries the cookie back (``SEG.ACK - 1``) and the client's ISN
(``SEG.SEQ - 1``); if the cookie verifies, the connection is created there, already
ESTABLISHED, from what the cookie remembers of the SYN.

The ISN (32 bits) is ``H1(tuple) + client ISN + (slice << 24) + ((H2(tuple, client ISN,
slice) + mss index) mod 2**24)``, the structure Linux's ``secure_tcp_syn_cookie`` uses but
for the client ISN inside H2 (below): H1 and H2 are
BLAKE2s keyed with a secret derived from the host's RFC 6528 key, ``slice`` counts
``COOKIE_PERIOD`` seconds, so the hash behind the low 24 bits changes with every slice (the
secret rotates), and a cookie is accepted in its own slice and the next
(``MAX_COOKIE_AGE``). The low 24 bits hold a valid MSS index for 7 in 2**24 forged
values, so a blind attacker must send millions of ACKs per 4-tuple to open one connection.

A deliberate departure from Linux: there the client ISN is only added, so a segment ``k``
bytes off the cookie ACK (a keep-alive at SEG.SEQ = ISN, a segment after the first ``k``
bytes) reads as the same cookie with the MSS index shifted by ``k``, which is often still
valid: the connection would open with a wrong IRS and never take the client's data. With
the client ISN hashed into H2 as well, only SEG.SEQ - 1 = ISN verifies (RFC 4987 3.6: the
cookie must encode the SYN it answers).

Only the MSS fits in the ISN. When the SYN carried timestamps (RFC 7323), the low 6 bits of
our SYN-ACK's TSval hold the peer's window scale (0xF: none) and SACK-permitted, and the
client echoes them in TSecr; without timestamps the connection gets neither window scaling
nor SACK, as with Linux. Our own options (window scale shift, MSS) are functions of the
listener's ``Config``, so they need no memory.

The TSval is the connection's own RFC 7323 clock rounded down to a 64-tick step (with the
per-connection offset the connection would compute itself), so the TSvals the established
connection sends later never go backwards.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ._config import Config
from ._connection import TS_HZ, Connection
from ._seq import MASK, rfc6528_isn, seq_gt
from ._wire import ACK, MAX_WSCALE, SYN, Segment

# Linux's cookie time slice is 64 s (tcp_cookie_time); a cookie lives in its slice and the
# next (MAX_SYNCOOKIE_AGE), so at least 64 s and at most 128 s.
COOKIE_PERIOD = 64.0
MAX_COOKIE_AGE = 2
# The MSS values a cookie can carry; a SYN's MSS is rounded down to one of them, so we
# never send a segment larger than the peer asked for (RFC 9293 3.7.1). 64 is the least
# utcp accepts, 536 RFC 9293 3.7.1's default (and a SYN without MSS option), 1200 leaves
# room for tunnels, 1432 and 1452 are utcp's defaults over a 1500-byte MTU (IPv6, IPv4;
# WIRE.md "Sizes"), 8952 is a 9000-byte jumbo frame and 65495 a loopback interface.
MSS_TABLE = (64, 536, 1200, 1432, 1452, 8952, 65495)
_SLICE_BITS = 8
_DATA_BITS = 24
_DATA_MASK = (1 << _DATA_BITS) - 1
# TSval low bits (Linux's TSBITS = 6): 4 bits of window scale, 1 of SACK-permitted; the
# sixth, Linux's ECN bit, stays 0 (utcp does not negotiate ECN).
TS_OPTION_BITS = 6
_TS_OPTION_MASK = (1 << TS_OPTION_BITS) - 1
_WSCALE_NONE = 0xF
_SACK_BIT = 0x10


@dataclass(frozen=True, slots=True)
class CookieSyn:
    """What a valid cookie ACK tells about the SYN it answers."""

    mss: int
    wscale: int | None
    sack_permitted: bool
    timestamps: bool


def ts_clock(isn_key: bytes, conn_id: bytes, now: float) -> int:
    """The RFC 7323 TSval a connection with this identity sends at ``now``: the clock
    ``Connection._ts_now`` runs, with the per-connection offset of RFC 7323 7.1."""
    return (int(now * TS_HZ) + rfc6528_isn(isn_key, conn_id + b"ts", 0.0)) & MASK


class SynCookies:
    """Makes and checks cookies with one host's secret."""

    __slots__ = ("_key",)

    def __init__(self, isn_key: bytes) -> None:
        # A key of its own, so the cookie hash and the RFC 6528 ISN hash never share inputs.
        self._key = hashlib.blake2s(isn_key, person=b"utcpsync").digest()

    def _hash(self, conn_id: bytes, tweak: int, peer_isn: int = 0) -> int:
        data = conn_id + tweak.to_bytes(4, "big") + peer_isn.to_bytes(4, "big")
        h = hashlib.blake2s(data, key=self._key, digest_size=4)
        return int.from_bytes(h.digest(), "big")

    @staticmethod
    def _slice(now: float) -> int:
        return int(now // COOKIE_PERIOD)

    def make_isn(self, conn_id: bytes, peer_isn: int, mss: int, now: float) -> int:
        """Our ISN for a SYN from ``conn_id`` with ISN ``peer_isn`` and MSS option ``mss``."""
        index = max((i for i, m in enumerate(MSS_TABLE) if m <= mss), default=0)
        count = self._slice(now)
        data = (self._hash(conn_id, count, peer_isn) + index) & _DATA_MASK
        high = (count & ((1 << _SLICE_BITS) - 1)) << _DATA_BITS
        return (self._hash(conn_id, 1 << 31) + peer_isn + high + data) & MASK

    def check_isn(self, conn_id: bytes, peer_isn: int, isn: int, now: float) -> int | None:
        """The MSS a cookie ISN carries, or None if it is not one of ours (forged, or older
        than ``MAX_COOKIE_AGE`` slices)."""
        raw = (isn - self._hash(conn_id, 1 << 31) - peer_isn) & MASK
        current = self._slice(now)
        age = (current - (raw >> _DATA_BITS)) & ((1 << _SLICE_BITS) - 1)
        if age >= MAX_COOKIE_AGE:
            return None
        index = (raw - self._hash(conn_id, current - age, peer_isn)) & _DATA_MASK
        return MSS_TABLE[index] if index < len(MSS_TABLE) else None


def cookie_tsval(clock: int, syn: Segment, config: Config) -> int:
    """Our SYN-ACK's TSval: ``clock`` with its low bits replaced by the SYN's options, never
    above ``clock`` (Linux's cookie_init_timestamp)."""
    wscale = syn.wscale if syn.wscale is not None and config.window_scaling else None
    bits = min(wscale, MAX_WSCALE) if wscale is not None else _WSCALE_NONE
    if syn.sack_permitted and config.sack:
        bits |= _SACK_BIT
    tsval = (clock & ~_TS_OPTION_MASK & MASK) | bits
    if seq_gt(tsval, clock):
        tsval = (tsval - (1 << TS_OPTION_BITS)) & MASK
    return tsval


def decode_ack(ack: Segment, mss: int, config: Config) -> CookieSyn | None:
    """The SYN a verified cookie ``ack`` answers, or None if its TSecr cannot be one of our
    cookie TSvals (options we never offered)."""
    if ack.timestamps is None or not config.timestamps:
        # RFC 7323 3.2: no timestamps: the low TSval bits never made the round trip.
        return CookieSyn(mss, None, False, False)
    bits = ack.timestamps[1] & _TS_OPTION_MASK
    shift = bits & 0xF
    wscale = None if shift == _WSCALE_NONE else shift
    if wscale is not None and (wscale > MAX_WSCALE or not config.window_scaling):
        return None
    sack = bool(bits & _SACK_BIT)
    if (sack and not config.sack) or bits >> 5:
        return None
    return CookieSyn(mss, wscale, sack, True)


def cookie_synack(
    syn: Segment, config: Config, *, isn: int, tsval: int | None, ipv6: bool
) -> Segment:
    """The SYN-ACK a connection of ``config`` would send, with the cookie ISN and TSval."""
    ts = syn.timestamps if tsval is not None else None
    # Without timestamps the cookie cannot remember window scale and SACK-permitted, so
    # the SYN-ACK offers neither (RFC 7323 2.2, RFC 2018 2: both need both SYNs), as Linux.
    wscale = None
    if syn.wscale is not None and config.window_scaling and ts is not None:
        wscale = Connection._wscale_for(config.receive_buffer_size)
    return Segment(
        syn.dst_port,
        syn.src_port,
        isn,
        (syn.seq + 1) & MASK,  # data on the SYN is not kept: there is nowhere to keep it
        SYN | ACK,
        min(config.receive_buffer_size, 65535),  # RFC 7323 2.2: a SYN's window is unscaled
        mss=config.local_mss(ipv6),
        wscale=wscale,
        sack_permitted=syn.sack_permitted and config.sack and ts is not None,
        timestamps=(tsval, ts[0]) if ts is not None and tsval is not None else None,
    )


def open_from_cookie(
    conn: Connection, ack: Segment, isn: int, peer_isn: int, syn: CookieSyn, now: float
) -> None:
    """Bring a fresh ``conn`` to where a SYN-RECEIVED connection would be when ``ack``
    arrives, then let it take ``ack`` (RFC 9293 3.10.7.4 fifth: SYN-RECEIVED -> ESTABLISHED).
    ``peer_isn`` is the client's ISN the cookie verified with: ``ack.seq - 1``, or
    ``ack.seq`` for a keep-alive probe (taken like ``_handshake.late_final_ack``).

    The SYN is rebuilt from the cookie and fed to the connection in LISTEN, so options are
    negotiated by the one code that always does it; the SYN-ACK it would send is marked as
    sent (the host sent it statelessly) and untimed: RFC 6298 3 (Karn) needs its send time,
    which only the echoed timestamp knows (RFC 7323 4.1), as Linux measures it.
    """
    rebuilt = Segment(
        ack.src_port,
        ack.dst_port,
        peer_isn,
        0,
        SYN,
        ack.window,
        mss=syn.mss,
        wscale=syn.wscale,
        sack_permitted=syn.sack_permitted,
        timestamps=(ack.timestamps[0], 0) if syn.timestamps and ack.timestamps else None,
    )
    conn._iss_override = isn
    conn.listen()
    conn.receive_segment(rebuilt, now)
    conn.stats.segments_received -= 1  # the rebuilt SYN never crossed the network
    conn._syn_due = False
    conn._syn_sends = 1
    conn._syn_time = None
    conn._snd_nxt = 1
    conn.receive_segment(ack, now)
