"""The wire codec: one RFC 9293 3.1 TCP segment per UDP datagram (see WIRE.md).

``encode`` turns a :class:`Segment` into datagram bytes and raises ``ValueError`` for local
misuse. ``decode_untrusted`` turns any bytes from the network into a :class:`Segment` or raises
:class:`DecodeError`, and nothing else, so the endpoint can drop and count.

The checksum is the RFC 1071 internet checksum over header, options and payload with no
pseudo-header (NATs rewrite the outer addresses). It is computed with one C-speed pass: since
``2**16 == 1 (mod 0xFFFF)``, a big-endian integer taken modulo 0xFFFF equals the ones'
complement sum of its 16-bit words, except that a nonzero sum of 0xFFFF ("negative zero")
comes out as 0. Large datagrams are summed in pieces (``_sum_value``).

Decoding is on the per-datagram hot path: the fixed header is one ``unpack_from``, a segment
with no options or with only the NOP NOP TS block takes a fast path, and the payload is a
zero-copy ``memoryview`` slice of the input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

HEADER_LEN = 20  # RFC 9293 3.1: data offset 5 words
MAX_OPTIONS_LEN = 40  # RFC 9293 3.1: data offset at most 15 words

# Option kinds (WIRE.md table).
_EOL = 0
_NOP = 1
_MSS = 2  # RFC 9293 3.7.1
_WSCALE = 3  # RFC 7323 2.2
_SACK_PERMITTED = 4  # RFC 2018 2
_SACK = 5  # RFC 2018 3
_TIMESTAMPS = 8  # RFC 7323 3.2
_FASTOPEN = 34  # RFC 7413 4.1.1

MAX_WSCALE = 14  # RFC 7323 2.3
# A UDP address (host, port): where a segment travels from or to (WIRE.md "Ports").
Address = tuple[str, int]
_MAX_SACK_BLOCKS = 4  # RFC 2018 3: 4 blocks fill 34 of the 40 option bytes
_MAX_COOKIE_LEN = 16  # RFC 7413 4.1.1 (WIRE.md: option length 2..18)

_HDR = struct.Struct("!HHIIBBHHH")  # ports, seq, ack, offset, flags, window, checksum, urgent
_HDR_TS = struct.Struct("!HHIIBBHHHIII")  # the same followed by the aligned timestamps block
_TS_OFFSET = (HEADER_LEN + 12) // 4 << 4  # the data offset byte of a header with only them
_U16 = struct.Struct("!H")
_TS_BLOCK = struct.Struct("!III")  # NOP NOP kind len, TSval, TSecr
_TS_PREFIX = 0x0101080A  # NOP NOP 8 10: the aligned timestamps layout (RFC 7323 appendix A)
_SACKOK_TS_PREFIX = 0x0402080A  # SACK-permitted directly followed by timestamps
_SACK_BLOCK = struct.Struct("!II")
_MASK32 = 0xFFFFFFFF

_FLAG_LETTERS = ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (URG, "U"), (ECE, "E"), (CWR, "W"))


class DecodeError(Exception):
    """The one error :func:`decode_untrusted` raises.

    ``reason`` is a short stable string for counters: ``'short'`` (under 20 bytes),
    ``'offset'`` (data offset < 5 or past the datagram), ``'option'`` (an option whose length
    is < 2 or runs past the header, or a known option with the wrong length) or
    ``'checksum'`` (a nonzero checksum that does not verify).
    """

    reason: str
    detail: str

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Segment:
    """One TCP segment: the fixed header fields, the parsed options and the payload.

    Option fields are ``None``/empty when absent. ``urgent`` is carried as is: utcp leaves it
    0 on everything it sends (WIRE.md, RFC 6093), and a received value has no meaning.
    """

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes | memoryview = b""
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    timestamps: tuple[int, int] | None = None
    fastopen_cookie: bytes | None = None
    urgent: int = 0

    @property
    def syn(self) -> bool:
        return bool(self.flags & SYN)

    @property
    def fin(self) -> bool:
        return bool(self.flags & FIN)

    @property
    def rst(self) -> bool:
        return bool(self.flags & RST)

    @property
    def ack_flag(self) -> bool:
        return bool(self.flags & ACK)

    @property
    def seg_len(self) -> int:
        # RFC 9293 3.4: SEG.LEN counts the octets of data plus one each for SYN and FIN.
        return len(self.payload) + (self.flags & SYN != 0) + (self.flags & FIN != 0)

    def describe(self) -> str:
        """A one-line, tcpdump-like rendering for logs and test failures."""
        letters = "".join(ch for bit, ch in _FLAG_LETTERS if self.flags & bit)
        if self.flags & ACK:
            letters += "."
        opts: list[str] = []
        if self.mss is not None:
            opts.append(f"mss {self.mss}")
        if self.wscale is not None:
            opts.append(f"ws {self.wscale}")
        if self.sack_permitted:
            opts.append("sackOK")
        if self.timestamps is not None:
            opts.append(f"TS {self.timestamps[0]} {self.timestamps[1]}")
        if self.sack_blocks:
            blocks = "".join(f"{{{left}:{right}}}" for left, right in self.sack_blocks)
            opts.append(f"sack {len(self.sack_blocks)} {blocks}")
        if self.fastopen_cookie is not None:
            opts.append(f"tfo {self.fastopen_cookie.hex() or 'request'}")
        text = (
            f"{self.src_port}>{self.dst_port} [{letters or 'none'}] seq={self.seq} "
            f"ack={self.ack} win={self.window} len={len(self.payload)}"
        )
        if self.urgent:
            text += f" urg={self.urgent}"
        return f"{text} <{','.join(opts)}>" if opts else text


# Above this size the sum is taken over pieces of this many (an even number of) bytes.
_SUM_PIECE = 8192


def _sum_value(data: bytes | bytearray | memoryview) -> int:
    """An integer congruent (mod 0xFFFF) to the ones' complement sum of ``data``, zero only
    for all-zero data.

    RFC 1071 2(B): an odd trailing octet is padded with a zero octet on the right. Large
    data is summed in pieces: each starts at an even offset and (padded like the whole)
    has an even length, so each 16-bit word keeps its weight modulo 0xFFFF (2**16 == 1).
    The pieces' sum is an integer a few pieces' size instead of the whole datagram's, so
    the caller's ``% 0xFFFF`` (a division per 30-bit digit) costs that much less.
    """
    size = len(data)
    if size <= _SUM_PIECE:
        value = int.from_bytes(data, "big")
        return value << 8 if size & 1 else value
    value = 0
    with memoryview(data) as view:
        for i in range(0, size, _SUM_PIECE):
            piece = view[i : i + _SUM_PIECE]
            # Only the last piece can be odd: padded as RFC 1071 2(B) pads the whole.
            value += int.from_bytes(piece, "big") << (len(piece) & 1) * 8
    return value


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071: the 16-bit ones' complement of the ones' complement sum of ``data``."""
    value = _sum_value(data)
    if value == 0:
        return 0xFFFF  # the sum of all-zero data is +0, whose complement is 0xFFFF
    # A nonzero multiple of 0xFFFF sums to 0xFFFF (-0) under end-around carry (RFC 1071 2(A)).
    return 0xFFFF - (value % 0xFFFF or 0xFFFF)


def encode(seg: Segment) -> bytes:
    """Serialise ``seg`` into one datagram. Raises ``ValueError`` for local misuse."""
    ts = seg.timestamps
    if (
        ts is not None
        and not seg.flags & SYN
        and not seg.sack_blocks
        and seg.mss is None
        and seg.wscale is None
        and not seg.sack_permitted
        and seg.fastopen_cookie is None
    ):
        data = _encode_with_timestamps(seg, ts)
        if data is not None:
            return data
    opts = _encode_options(seg)
    words = HEADER_LEN // 4 + len(opts) // 4
    try:
        head = _HDR.pack(
            seg.src_port,
            seg.dst_port,
            seg.seq,
            seg.ack,
            words << 4,
            seg.flags,
            seg.window,
            0,
            seg.urgent,
        )
    except struct.error:
        _check_header_fields(seg)
        raise
    payload = seg.payload
    # The header and options are 4-byte aligned, so their sum and the payload's simply add.
    total = _sum_value(head) + _sum_value(opts) + _sum_value(payload)
    # WIRE.md: a computed checksum of zero is sent as 0xFFFF, so 0 always means "not computed".
    checksum = 0xFFFF - total % 0xFFFF
    return b"".join((head[:16], _U16.pack(checksum), head[18:], opts, payload))


def _encode_with_timestamps(seg: Segment, ts: tuple[int, int]) -> bytes | None:
    """``encode`` for the segment of an established connection, whose only option is the
    aligned timestamps block, in one ``pack``; None if a field does not fit (``encode``
    then names it). The checksum needs no bytes: each field starts on a 16-bit boundary,
    so its value is congruent (mod 0xFFFF) to the sum of its 16-bit words, as the module
    docstring says of the whole datagram, and the offset and flags bytes form one word."""
    payload = seg.payload
    try:
        total = (
            seg.src_port + seg.dst_port + seg.seq + seg.ack + (_TS_OFFSET << 8 | seg.flags)
            + seg.window + seg.urgent + _TS_PREFIX + ts[0] + ts[1]
        )  # fmt: skip
        if payload:
            total += _sum_value(payload)
        # WIRE.md: a computed checksum of zero is sent as 0xFFFF (as ``encode`` does).
        head = _HDR_TS.pack(
            seg.src_port, seg.dst_port, seg.seq, seg.ack, _TS_OFFSET, seg.flags, seg.window,
            0xFFFF - total % 0xFFFF, seg.urgent, _TS_PREFIX, ts[0], ts[1],
        )  # fmt: skip
    except (struct.error, TypeError):
        return None
    return head + payload if payload else head


def _check_header_fields(seg: Segment) -> None:
    """Name the field that made the header fail to pack (the slow path of ``encode``)."""
    for name, value, limit in (
        ("src_port", seg.src_port, 0xFFFF),
        ("dst_port", seg.dst_port, 0xFFFF),
        ("seq", seg.seq, _MASK32),
        ("ack", seg.ack, _MASK32),
        ("flags", seg.flags, 0xFF),
        ("window", seg.window, 0xFFFF),
        ("urgent", seg.urgent, 0xFFFF),
    ):
        if not isinstance(value, int) or not 0 <= value <= limit:
            raise ValueError(f"{name}={value!r} is outside 0..{limit}")


def _encode_options(seg: Segment) -> bytes:
    """The options block in the Linux-like layout, padded to a multiple of 4 bytes."""
    ts = seg.timestamps
    if seg.flags & SYN:
        out = _encode_syn_options(seg)
    else:
        # RFC 7323 2.2, RFC 2018 2: these options may only appear on a SYN.
        if seg.mss is not None or seg.wscale is not None or seg.sack_permitted:
            raise ValueError("mss, wscale and sack_permitted are only sent on a SYN")
        if seg.fastopen_cookie is not None:
            raise ValueError("a fast open cookie is only sent on a SYN (RFC 7413 4.1.1)")
        if ts is None and not seg.sack_blocks:
            return b""
        out = bytearray()
        if ts is not None:
            out += _pack_ts(_TS_PREFIX, ts)
    if seg.sack_blocks:
        out += _encode_sack_blocks(seg)
    if len(out) > MAX_OPTIONS_LEN:
        raise ValueError(f"options need {len(out)} bytes, more than {MAX_OPTIONS_LEN}")
    return bytes(out)


def _encode_syn_options(seg: Segment) -> bytearray:
    out = bytearray()
    if seg.sack_blocks:
        raise ValueError("SACK blocks are never sent on a SYN (RFC 2018 3)")
    if seg.mss is not None:
        if not 0 <= seg.mss <= 0xFFFF:
            raise ValueError(f"mss={seg.mss} is outside 0..65535")
        out += bytes((_MSS, 4)) + _U16.pack(seg.mss)  # RFC 9293 3.7.1
    ts = seg.timestamps
    if ts is not None:
        out += _pack_ts(_SACKOK_TS_PREFIX if seg.sack_permitted else _TS_PREFIX, ts)
    elif seg.sack_permitted:
        out += bytes((_NOP, _NOP, _SACK_PERMITTED, 2))  # RFC 2018 2
    if seg.wscale is not None:
        # RFC 7323 2.3: a shift count above 14 is never sent.
        if not 0 <= seg.wscale <= MAX_WSCALE:
            raise ValueError(f"wscale={seg.wscale} is outside 0..{MAX_WSCALE}")
        out += bytes((_NOP, _WSCALE, 3, seg.wscale))
    cookie = seg.fastopen_cookie
    if cookie is not None:
        if len(cookie) > _MAX_COOKIE_LEN:
            raise ValueError(f"fast open cookie of {len(cookie)} bytes, more than 16")
        out += bytes((_FASTOPEN, 2 + len(cookie))) + cookie
        out += bytes((_NOP,)) * (-len(out) % 4)
    return out


def _pack_ts(prefix: int, ts: tuple[int, int]) -> bytes:
    try:
        return _TS_BLOCK.pack(prefix, ts[0], ts[1])  # RFC 7323 3.2
    except struct.error:
        raise ValueError(f"timestamps {ts!r} are outside 0..2**32-1") from None


def _encode_sack_blocks(seg: Segment) -> bytes:
    blocks = seg.sack_blocks
    # RFC 2018 3: at most 4 blocks, or 3 when the timestamps option takes 12 bytes.
    limit = _MAX_SACK_BLOCKS - 1 if seg.timestamps is not None else _MAX_SACK_BLOCKS
    if len(blocks) > limit:
        raise ValueError(f"{len(blocks)} SACK blocks, at most {limit} fit")
    out = bytearray((_NOP, _NOP, _SACK, 2 + 8 * len(blocks)))
    for left, right in blocks:
        try:
            out += _SACK_BLOCK.pack(left, right)
        except struct.error:
            raise ValueError(f"SACK block {(left, right)!r} is outside 0..2**32-1") from None
    return bytes(out)


def decode_untrusted(data: bytes | bytearray | memoryview) -> Segment:
    """Parse one datagram from the network. Raises :class:`DecodeError` and nothing else.

    The checksum is verified before the layout is parsed, so a corrupted datagram reports
    ``'checksum'`` even when the corruption also broke the header. The returned payload is a
    memoryview into ``data``.
    """
    view = memoryview(data)
    if type(data) is not bytes and (view.format != "B" or view.ndim != 1 or not view.c_contiguous):
        view = memoryview(view.tobytes())
    size = len(view)
    if size < HEADER_LEN:
        raise DecodeError("short", f"{size} bytes")
    if size >= HEADER_LEN + 12:
        # Most segments carry the aligned timestamps block alone: one unpack for both.
        (src, dst, seq, ack, offset, flags, window, checksum, urgent, prefix, tsval, tsecr) = (
            _HDR_TS.unpack_from(view)
        )
    else:
        src, dst, seq, ack, offset, flags, window, checksum, urgent = _HDR.unpack_from(view)
        prefix = tsval = tsecr = 0
    # WIRE.md: 0 means "not computed"; any other value must verify (RFC 1071 4.1: the sum over
    # the data and its checksum is all ones, a multiple of 0xFFFF).
    if checksum and _sum_value(view) % 0xFFFF:
        raise DecodeError("checksum", f"field {checksum:#06x} does not verify")
    if offset == _TS_OFFSET and prefix == _TS_PREFIX:
        return Segment(
            src, dst, seq, ack, flags, window, view[HEADER_LEN + 12 :],
            timestamps=(tsval, tsecr), urgent=urgent,
        )  # fmt: skip
    header_len = (offset >> 4) * 4
    if header_len < HEADER_LEN or header_len > size:
        raise DecodeError("offset", f"header of {header_len} bytes in a {size}-byte datagram")
    seg = Segment(src, dst, seq, ack, flags, window, view[header_len:], urgent=urgent)
    if header_len > HEADER_LEN:
        _decode_options(view, header_len, seg)
    return seg


def _decode_options(view: memoryview, end: int, seg: Segment) -> None:
    """Store the options in ``view[20:end]`` on ``seg``; unknown kinds are skipped."""
    pos = HEADER_LEN
    while pos < end:
        kind = view[pos]
        if kind == _EOL:  # RFC 9293 3.1: end of option list
            return
        if kind == _NOP:
            pos += 1
            continue
        if pos + 1 >= end:
            raise DecodeError("option", f"kind {kind} at {pos} has no length byte")
        length = view[pos + 1]
        # RFC 9293 3.1: the length counts kind and length; WIRE.md: overruns are malformed.
        if length < 2 or pos + length > end:
            raise DecodeError("option", f"kind {kind} at {pos} has length {length}")
        body = pos + 2
        if kind == _MSS:
            _expect_length(kind, length, 4)
            seg.mss = _U16.unpack_from(view, body)[0]
        elif kind == _WSCALE:
            _expect_length(kind, length, 3)
            # RFC 7323 2.3: a shift count above 14 is used as 14.
            seg.wscale = min(view[body], MAX_WSCALE)
        elif kind == _SACK_PERMITTED:
            _expect_length(kind, length, 2)
            seg.sack_permitted = True
        elif kind == _SACK:
            count, rest = divmod(length - 2, 8)
            if rest or not 1 <= count <= _MAX_SACK_BLOCKS:  # RFC 2018 3
                raise DecodeError("option", f"SACK option of length {length}")
            seg.sack_blocks = tuple(
                _SACK_BLOCK.unpack_from(view, body + 8 * i) for i in range(count)
            )
        elif kind == _TIMESTAMPS:
            _expect_length(kind, length, 10)
            seg.timestamps = _SACK_BLOCK.unpack_from(view, body)
        elif kind == _FASTOPEN:
            if length > 2 + _MAX_COOKIE_LEN:
                raise DecodeError("option", f"fast open option of length {length}")
            seg.fastopen_cookie = bytes(view[body : pos + length])
        pos += length


def _expect_length(kind: int, length: int, expected: int) -> None:
    if length != expected:
        raise DecodeError("option", f"kind {kind} has length {length}, expected {expected}")


def reset_for(seg: Segment) -> Segment | None:
    """The RST that answers a segment arriving for no connection (RFC 9293 3.10.7.1)."""
    if seg.flags & RST:
        return None  # an incoming RST is discarded, never answered
    if seg.flags & ACK:
        return Segment(seg.dst_port, seg.src_port, seg.ack, 0, RST, 0)
    return Segment(seg.dst_port, seg.src_port, 0, (seg.seq + seg.seg_len) & _MASK32, RST | ACK, 0)
