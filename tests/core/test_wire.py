"""The wire codec on golden bytes both ways, on every truncation and bit flip, and fuzzed."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utcp._wire import (
    ACK,
    FIN,
    HEADER_LEN,
    PSH,
    RST,
    SYN,
    DecodeError,
    Segment,
    decode_untrusted,
    encode,
    internet_checksum,
)


def reference_checksum(data: bytes) -> int:
    """RFC 1071 4.1, word by word with end-around carry: the slow, obvious version."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def decode_reason(data: bytes) -> str | None:
    """Decode, returning the DecodeError reason, or None if it decoded."""
    try:
        decode_untrusted(data)
    except DecodeError as exc:
        return exc.reason
    return None


def with_checksum(data: bytes, value: int) -> bytes:
    return data[:16] + struct.pack("!H", value) + data[18:]


REQUEST = b"GET / HTTP/1.1\r\n\r\n"

# Each row: wire bytes written out field by field, and the Segment they mean. The remote
# sequence numbers sit near 2**32 so wrap-around is exercised.
GOLDEN = {
    "syn": (
        # ports 40000>80, seq, ack, offset 10 + SYN, window, checksum, urgent
        h("9c40 0050 ffffff00 00000000 a002 ffff aca4 0000")
        # MSS 1452 | SACK-permitted, TS 1 0 | NOP, window scale 7
        + h("020405ac 0402080a 00000001 00000000 01030307"),
        Segment(
            40000, 80, 0xFFFFFF00, 0, SYN, 65535,
            mss=1452, sack_permitted=True, timestamps=(1, 0), wscale=7,
        ),
    ),
    "syn-ack": (
        h("0050 9c40 7ffffff0 ffffff01 a012 ffff 80d3 0000")
        + h("020405ac 0402080a 0000abcd 00000001 01030309"),
        Segment(
            80, 40000, 0x7FFFFFF0, 0xFFFFFF01, SYN | ACK, 65535,
            mss=1452, sack_permitted=True, timestamps=(0xABCD, 1), wscale=9,
        ),
    ),
    "data": (
        # offset 8 + PSH ACK | NOP NOP TS 2 0xabcd | payload
        h("9c40 0050 ffffff01 7ffffff1 8018 01f5 cef2 0000")
        + h("0101080a 00000002 0000abcd")
        + REQUEST,
        Segment(
            40000, 80, 0xFFFFFF01, 0x7FFFFFF1, PSH | ACK, 501, REQUEST, timestamps=(2, 0xABCD)
        ),
    ),
    "sack": (
        # offset 15 + ACK | NOP NOP TS | NOP NOP SACK length 26, three blocks, one wrapping
        h("0050 9c40 7ffffff1 ffffff01 f010 01fd 2d76 0000")
        + h("0101080a 0000abce 00000002")
        + h("0101051a 00000100 00000200 fffffff0 00000010 00000300 00000400"),
        Segment(
            80, 40000, 0x7FFFFFF1, 0xFFFFFF01, ACK, 509,
            sack_blocks=((0x100, 0x200), (0xFFFFFFF0, 0x10), (0x300, 0x400)),
            timestamps=(0xABCE, 2),
        ),
    ),
    "rst": (
        h("9c40 0050 00000013 00000000 5004 0000 1358 0000"),
        Segment(40000, 80, 0x13, 0, RST, 0),
    ),
    "ack": (
        h("9c40 0050 00000013 7ffffff1 5010 01f6 9164 0000"),
        Segment(40000, 80, 0x13, 0x7FFFFFF1, ACK, 502),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_decode(name: str) -> None:
    data, expected = GOLDEN[name]
    assert reference_checksum(data) == 0  # the literal carries a valid RFC 1071 checksum
    seg = decode_untrusted(data)
    assert seg == expected, seg.describe()
    assert isinstance(seg.payload, memoryview)
    assert seg.payload.obj is data  # zero-copy slice of the input


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_encode(name: str) -> None:
    data, seg = GOLDEN[name]
    assert encode(seg) == data


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_decode_accepts_buffer_types(kind: type) -> None:
    data, expected = GOLDEN["data"]
    assert decode_untrusted(kind(data)) == expected


def test_decode_non_byte_memoryview() -> None:
    data, expected = GOLDEN["sack"]
    assert decode_untrusted(memoryview(data).cast("H")) == expected
    interleaved = bytes(x for pair in zip(data, b"\xaa" * len(data), strict=True) for x in pair)
    assert decode_untrusted(memoryview(interleaved)[::2]) == expected  # not contiguous


def test_segment_properties_and_describe() -> None:
    syn = GOLDEN["syn"][1]
    assert syn.syn and not syn.fin and not syn.rst and not syn.ack_flag
    assert syn.seg_len == 1  # RFC 9293 3.4: SYN occupies one sequence number
    data = GOLDEN["data"][1]
    assert data.seg_len == len(REQUEST) and data.ack_flag
    fin = Segment(1, 2, 3, 4, FIN | ACK, 5, b"ab")
    assert fin.fin and fin.seg_len == 3
    assert syn.describe() == (
        "40000>80 [S] seq=4294967040 ack=0 win=65535 len=0 <mss 1452,ws 7,sackOK,TS 1 0>"
    )
    assert (
        GOLDEN["sack"][1]
        .describe()
        .endswith(
            "[.] seq=2147483633 ack=4294967041 win=509 len=0 "
            "<TS 43982 2,sack 3 {256:512}{4294967280:16}{768:1024}>"
        )
    )
    assert Segment(1, 2, 0, 0, 0, 0).describe() == "1>2 [none] seq=0 ack=0 win=0 len=0"


# --- checksum -------------------------------------------------------------------------------


def test_rfc1071_example() -> None:
    # RFC 1071 3: these words sum to 0xddf2, so the checksum is its complement.
    data = h("0001 f203 f4f5 f6f7")
    assert reference_checksum(data) == 0x220D
    assert internet_checksum(data) == 0x220D
    assert internet_checksum(data + struct.pack("!H", 0x220D)) == 0


@given(st.binary(max_size=64))
@settings(max_examples=300)
def test_checksum_matches_reference(data: bytes) -> None:
    assert internet_checksum(data) == reference_checksum(data)


@pytest.mark.parametrize("size", [8191, 8192, 8193, 8194, 16385, 65475 + 32, 65507])
@pytest.mark.parametrize("fill", ["random", "zeros", "ones"])
def test_checksum_of_large_data_matches_reference(size: int, fill: str) -> None:
    # Above 8 KiB the sum is taken in little-endian pieces (the byte-order independence of
    # RFC 1071 2(B)); odd sizes, piece boundaries, -0 and +0 must come out as word by word.
    rng = random.Random(size)
    data = {
        "random": rng.randbytes(size),
        "zeros": bytes(size),
        "ones": b"\xff" * size,
    }[fill]
    expected = reference_checksum(data)
    assert internet_checksum(data) == expected
    assert internet_checksum(memoryview(data)) == expected
    assert internet_checksum(bytearray(data)) == expected


def test_a_large_segment_verifies_and_catches_bit_flips() -> None:
    rng = random.Random(5)
    data = encode(Segment(1, 2, 3, 4, ACK, 5, rng.randbytes(65475), timestamps=(7, 8)))
    assert decode_untrusted(data).payload == data[32:]
    for bit in rng.sample(range(len(data) * 8), 200):
        corrupt = bytearray(data)
        corrupt[bit // 8] ^= 0x80 >> (bit % 8)
        assert decode_reason(bytes(corrupt)) == "checksum", bit


def test_checksum_edge_values() -> None:
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(b"\0\0\0") == 0xFFFF
    assert internet_checksum(b"\xff\xff") == 0  # sum is -0 (0xFFFF)
    assert internet_checksum(b"\x80\x00\x7f\xff") == 0
    assert internet_checksum(b"\x01") == 0xFEFF  # odd octet padded on the right


def test_zero_checksum_field_is_accepted() -> None:
    data, expected = GOLDEN["data"]
    assert decode_untrusted(with_checksum(data, 0)) == expected


def test_wrong_checksum_rejected() -> None:
    data, _ = GOLDEN["ack"]
    assert decode_reason(with_checksum(data, 0x1234)) == "checksum"


def test_every_single_bit_flip_is_caught() -> None:
    data = encode(Segment(1000, 2000, 0xFFFFFFFE, 17, PSH | ACK, 1024, b"abc", timestamps=(5, 6)))
    checksum = struct.unpack_from("!H", data, 16)[0]
    assert bin(checksum).count("1") > 1  # no flip can turn it into 0 ("not computed")
    for bit in range(len(data) * 8):
        corrupt = bytearray(data)
        corrupt[bit // 8] ^= 0x80 >> (bit % 8)
        assert decode_reason(bytes(corrupt)) == "checksum", bit


def test_computed_zero_is_sent_as_ffff() -> None:
    base = Segment(1, 2, 3, 4, ACK, 0, b"xyz")
    # Pick the window so that the words sum to 0xFFFF and the computed checksum is 0.
    partial = 0xFFFF - reference_checksum(with_checksum(encode(base), 0))  # the words' sum
    base.window = 0xFFFF - partial
    data = encode(base)
    assert internet_checksum(with_checksum(data, 0)) == 0
    assert data[16:18] == b"\xff\xff"
    assert reference_checksum(data) == 0
    assert decode_untrusted(data) == base


# --- malformed datagrams --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["syn", "sack", "data"])
def test_every_truncation_fails_cleanly(name: str) -> None:
    data, _ = GOLDEN[name]
    header_len = (data[12] >> 4) * 4
    for size in range(len(data)):
        if size < header_len:
            assert decode_reason(data[:size]) is not None, size
        # Without a checksum to catch it, the layout checks must.
        reason = decode_reason(with_checksum(data, 0)[:size])
        if size < HEADER_LEN:
            assert reason == "short", size
        elif size < header_len:
            assert reason == "offset", size
        else:
            assert reason is None, size


@pytest.mark.parametrize("offset_words", [0, 1, 4, 6, 15])
def test_bad_data_offset(offset_words: int) -> None:
    data = bytearray(GOLDEN["ack"][0])
    data[12] = offset_words << 4
    assert decode_reason(with_checksum(bytes(data), 0)) == "offset"


def build(options: bytes, flags: int = ACK, payload: bytes = b"") -> bytes:
    """A datagram with the given raw option bytes (a multiple of 4) and a valid checksum."""
    assert len(options) % 4 == 0
    words = 5 + len(options) // 4
    head = struct.pack("!HHIIBBHHH", 1, 2, 3, 4, words << 4, flags, 100, 0, 0)
    data = head + options + payload
    return with_checksum(data, internet_checksum(data) or 0xFFFF)


def test_unknown_option_is_skipped() -> None:
    # kind 254 length 6 (an experiment), then NOP NOP TS
    seg = decode_untrusted(build(h("fe06 deadbeef 0101 080a 00000007 00000008") + b"\0\0"))
    assert seg.timestamps == (7, 8)
    assert seg.payload == b""


def test_eol_ends_option_parsing() -> None:
    seg = decode_untrusted(build(h("0101080a 00000007 00000008 00020304")))
    assert seg.timestamps == (7, 8) and seg.mss is None


def test_options_are_stored_regardless_of_flags() -> None:
    # Liberal receiver: an MSS on a plain ACK is reported, not rejected.
    seg = decode_untrusted(build(h("020405b4 01030300")))
    assert seg.mss == 1460 and seg.wscale == 0 and not seg.syn


def test_window_scale_is_clamped_to_14() -> None:
    # RFC 7323 2.3: a shift count above 14 is used as 14.
    assert decode_untrusted(build(h("0103030f"), SYN)).wscale == 14


def test_fastopen_cookie_decodes() -> None:
    assert decode_untrusted(build(h("22020101"), SYN)).fastopen_cookie == b""
    seg = decode_untrusted(build(h("220a 0102030405060708 0101"), SYN))
    assert seg.fastopen_cookie == h("0102030405060708")


@pytest.mark.parametrize(
    "options",
    [
        "02030500",  # MSS length 3
        "02050000 00010101",  # MSS length 5
        "01010808 00000001 00000000",  # TS length 8
        "01 0809 00000001 000002 0000",  # TS length 9
        "0101080b 00000001 00000002",  # TS length 11 runs past the header
        "01010502",  # SACK with no blocks
        "01010503 00000000",  # SACK length 3
        "01 050b 00000001 00000002 00",  # SACK length 11 (not 2 + 8n)
        "01030400 00000000",  # window scale length 4
        "01010403 00000000",  # SACK-permitted length 3
        "01010400",  # option length 0
        "01010401",  # option length 1
        "010101fe",  # unknown kind with no length byte at the end of the header
        "fe080000",  # unknown kind running past the header
        "2214" + "00" * 18 + "01010101",  # fast open option of length 20
    ],
)
def test_bad_option_length(options: str) -> None:
    assert decode_reason(build(h(options))) == "option"


def test_sack_with_five_blocks_rejected() -> None:
    # 2 + 5 * 8 = 42 bytes cannot fit; a 4-block option plus an unknown kind can.
    assert decode_reason(build(h("052a") + bytes(38))) == "option"
    seg = decode_untrusted(build(h("0101 0522") + bytes(32) + h("0101 0101")))
    assert len(seg.sack_blocks) == 4


@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 0xFF).map(lambda f: f & ~SYN),
    st.integers(0, 0xFFFF),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.binary(max_size=40),
)
@settings(max_examples=200)
def test_a_segment_with_timestamps_is_the_header_then_nop_nop_ts(
    port: int, seq: int, ack: int, flags: int, window: int, ts: tuple[int, int], payload: bytes
) -> None:
    # The common segment's one-pack encoding, written out field by field (RFC 9293 3.1,
    # RFC 7323 appendix A), with the checksum of RFC 1071 (0 sent as 0xFFFF, WIRE.md).
    seg = Segment(port, 443, seq, ack, flags, window, payload, timestamps=ts)
    expected = struct.pack("!HHIIBBHHH", port, 443, seq, ack, 0x80, flags, window, 0, 0)
    expected += h("0101 080a") + struct.pack("!II", *ts) + payload
    expected = with_checksum(expected, reference_checksum(expected) or 0xFFFF)
    assert encode(seg) == expected
    assert decode_untrusted(expected) == seg


@pytest.mark.parametrize(
    ("seg", "field"),
    [
        (Segment(70000, 1, 0, 0, ACK, 0, timestamps=(1, 2)), "src_port"),
        (Segment(1, 2, 0, 2**32, ACK, 0, timestamps=(1, 2)), "ack"),
        (Segment(1, 2, 0, 0, ACK, 65536, timestamps=(1, 2)), "window"),
        (Segment(1, 2, 0, 0, ACK, 0, timestamps=(2**32, 2)), "timestamps"),
    ],
)
def test_misuse_with_timestamps_names_the_field(seg: Segment, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        encode(seg)


# --- local misuse ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seg",
    [
        Segment(70000, 1, 0, 0, ACK, 0),
        Segment(1, -1, 0, 0, ACK, 0),
        Segment(1, 2, 2**32, 0, ACK, 0),
        Segment(1, 2, 0, -5, ACK, 0),
        Segment(1, 2, 0, 0, 0x100, 0),
        Segment(1, 2, 0, 0, ACK, 65536),
        Segment(1, 2, 0, 0, ACK, 0, urgent=65536),
        Segment(1, 2, 0, 0, SYN, 0, mss=65536),
        Segment(1, 2, 0, 0, SYN, 0, wscale=15),
        Segment(1, 2, 0, 0, SYN, 0, timestamps=(2**32, 0)),
        Segment(1, 2, 0, 0, ACK, 0, timestamps=(0, -1)),
        Segment(1, 2, 2**32, 0, ACK, 0, timestamps=(1, 2)),
        Segment(1, 2, 0, 0, ACK, 65536, b"x", timestamps=(1, 2)),
        Segment(1, 2, 0, 0, SYN, 0, fastopen_cookie=bytes(17)),
        Segment(1, 2, 0, 0, ACK, 0, mss=1452),
        Segment(1, 2, 0, 0, ACK, 0, wscale=7),
        Segment(1, 2, 0, 0, ACK, 0, sack_permitted=True),
        Segment(1, 2, 0, 0, ACK, 0, fastopen_cookie=b""),
        Segment(1, 2, 0, 0, SYN | ACK, 0, sack_blocks=((1, 2),)),
        Segment(1, 2, 0, 0, ACK, 0, sack_blocks=((1, 2),) * 5),
        Segment(1, 2, 0, 0, ACK, 0, sack_blocks=((1, 2),) * 4, timestamps=(1, 2)),
        Segment(1, 2, 0, 0, ACK, 0, sack_blocks=((1, 2**32),)),
    ],
    ids=lambda seg: seg.describe(),
)
def test_encode_misuse_raises_value_error(seg: Segment) -> None:
    with pytest.raises(ValueError):
        encode(seg)


def test_largest_option_sets_fit() -> None:
    syn = Segment(
        1, 2, 0, 0, SYN, 0, mss=1, wscale=14, sack_permitted=True,
        timestamps=(1, 2), fastopen_cookie=bytes(16),
    )  # fmt: skip
    assert len(encode(syn)) == HEADER_LEN + 40
    assert decode_untrusted(encode(syn)) == syn
    ack = Segment(1, 2, 0, 0, ACK, 0, sack_blocks=((1, 2),) * 4)
    assert len(encode(ack)) == HEADER_LEN + 36


# --- hypothesis -----------------------------------------------------------------------------

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
timestamps = st.none() | st.tuples(u32, u32)


@st.composite
def segments(draw: st.DrawFn) -> Segment:
    flags = draw(st.integers(0, 0xFF))
    seg = Segment(
        draw(u16), draw(u16), draw(u32), draw(u32), flags, draw(u16),
        draw(st.binary(max_size=64)), urgent=draw(u16),
    )  # fmt: skip
    seg.timestamps = draw(timestamps)
    if flags & SYN:
        seg.mss = draw(st.none() | u16)
        seg.wscale = draw(st.none() | st.integers(0, 14))
        seg.sack_permitted = draw(st.booleans())
        seg.fastopen_cookie = draw(st.none() | st.binary(max_size=16))
    else:
        limit = 3 if seg.timestamps is not None else 4
        seg.sack_blocks = tuple(draw(st.lists(st.tuples(u32, u32), max_size=limit)))
    return seg


@given(segments())
@settings(max_examples=300)
def test_round_trip(seg: Segment) -> None:
    data = encode(seg)
    assert reference_checksum(data) == 0
    decoded = decode_untrusted(data)
    assert decoded == seg
    assert encode(decoded) == data


@given(
    u16, u16, u32, u32, st.integers(0, 0xFF).filter(lambda flags: not flags & SYN), u16,
    st.binary(max_size=64), u16, u32, u32,
)  # fmt: skip
@settings(max_examples=300)
def test_timestamps_only_segments_encode_field_by_field(
    src: int, dst: int, seq: int, ack: int, flags: int, window: int, payload: bytes,
    urgent: int, tsval: int, tsecr: int,
) -> None:  # fmt: skip
    # The layout of nearly every segment sent (encoded in one pack): header, NOP NOP TS,
    # payload, checksummed word by word; a computed zero goes out as 0xFFFF (WIRE.md).
    seg = Segment(src, dst, seq, ack, flags, window, payload, timestamps=(tsval, tsecr))
    seg.urgent = urgent
    data = struct.pack("!HHIIBBHHH", src, dst, seq, ack, 0x80, flags, window, 0, urgent)
    data += h("0101080a") + struct.pack("!II", tsval, tsecr) + payload
    assert encode(seg) == with_checksum(data, reference_checksum(data) or 0xFFFF)
    assert decode_untrusted(encode(seg)) == seg


@given(st.binary(max_size=80))
@settings(max_examples=300)
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    decode_reason(data)
    # The same bytes with no checksum reach the header and option parser.
    if len(data) >= 18:
        decode_reason(with_checksum(data, 0))


@given(segments(), st.lists(st.tuples(st.integers(0, 99), st.integers(0, 255)), min_size=1))
@settings(max_examples=300)
def test_mutated_datagrams_only_raise_decode_error(
    seg: Segment, edits: list[tuple[int, int]]
) -> None:
    data = bytearray(with_checksum(encode(seg), 0))
    for position, value in edits:
        data[position % len(data)] = value
    data[16:18] = b"\0\0"
    decode_reason(bytes(data))
