"""Hypothesis on the way in: the decoder alone and the host's receive path (issue 15).

The decoder gets arbitrary bytes and near-valid datagrams with a valid checksum (options that
overrun the header, a data offset past the end, every truncation), so the parser itself is
reached. The host gets batches of datagrams from the peer and from strangers, zero-length
ones included, aimed at and around its established connection's windows (the harness rebases
sequence numbers, see ``_fuzz_harness``). Nothing may raise; counters must add up. The core
in every RFC 9293 state is fuzzed in tests/core/test_fuzz.py; the stored corpus replays here.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from _fuzz_harness import decode_only, join, run_input, split
from hypothesis import given, settings
from hypothesis import strategies as st

from utcp._wire import ACK, SYN, DecodeError, Segment, decode_untrusted, encode, internet_checksum

CORPUS = Path(__file__).parent / "corpus"


def with_checksum(data: bytes | bytearray) -> bytes:
    """``data`` with a checksum field that verifies, so decoding gets past it."""
    buf = bytearray(data)
    if len(buf) >= 18:
        buf[16:18] = b"\0\0"
        buf[16:18] = struct.pack("!H", internet_checksum(buf) or 0xFFFF)
    return bytes(buf)


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A valid datagram broken in one way, and the reason decoding must give (None: valid)."""
    syn = draw(st.booleans())
    seg = Segment(
        40000,
        443,
        draw(st.integers(0, 2**32 - 1)),
        draw(st.integers(0, 2**32 - 1)),
        SYN if syn else ACK,
        draw(st.integers(0, 0xFFFF)),
        draw(st.binary(max_size=40)),
        mss=1400 if syn else None,
        wscale=draw(st.integers(0, 14)) if syn else None,
        sack_permitted=syn,
        timestamps=draw(st.none() | st.tuples(st.integers(0, 2**32 - 1), st.just(0))),
    )
    good = bytearray(encode(seg))
    header_len = (good[12] >> 4) * 4
    how = draw(st.sampled_from(["truncate", "overrun", "offset", "nolength", "valid"]))
    if how == "truncate":
        cut = draw(st.integers(0, header_len - 1))
        return with_checksum(good[:cut]), ("short" if cut < 20 else "offset")
    if how == "overrun":
        # One more option word whose length byte runs past the header's end.
        body = header_len - 20
        room = 40 - body
        if room < 4:
            return with_checksum(good), None
        kind = draw(st.sampled_from([2, 3, 4, 5, 8, 34, 99]))
        length = draw(st.integers(5, 255))
        opts = bytes(good[20:header_len]) + bytes((kind, length, 0, 0))
        data = bytearray(good[:20]) + opts + good[header_len:]
        data[12] = ((len(opts) + 20) // 4) << 4
        return with_checksum(data), "option"
    if how == "offset":
        words = draw(st.integers(0, 15))
        data = bytearray(good)
        data[12] = words << 4
        if words < 5 or words * 4 > len(data):
            return with_checksum(data), "offset"
        return with_checksum(data), "any"
    if how == "nolength":
        # A lone option kind in the last header byte: no room for its length byte.
        data = bytearray(good[:20]) + bytes((1, 1, 1, 2)) + good[header_len:]
        data[12] = 6 << 4
        return with_checksum(data), "option"
    return with_checksum(good), None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_decoder_takes_any_bytes(data: bytes) -> None:
    decode_only(data)


@settings(max_examples=200, deadline=None)
@given(near_valid())
def test_decoder_rejects_near_valid_datagrams_for_the_right_reason(
    case: tuple[bytes, str | None],
) -> None:
    data, reason = case
    decode_only(data)
    if reason == "any":
        return
    if reason is None:
        decode_untrusted(data)
        return
    with pytest.raises(DecodeError) as info:
        decode_untrusted(data)
    assert info.value.reason == reason


def segment_near_windows() -> st.SearchStrategy[bytes]:
    """An encodable segment whose seq/ack are small offsets (rebased by mode bit 0)."""
    return st.builds(
        lambda flags, seq, ack, window, payload, ts: encode(
            Segment(
                40000,
                443,
                seq & 0xFFFFFFFF,
                ack & 0xFFFFFFFF,
                flags,
                window,
                payload,
                timestamps=ts,
            )
        ),
        st.sampled_from([ACK, ACK | 0x01, ACK | 0x08, SYN, SYN | ACK, 0x04, 0x04 | ACK, 0])
        | st.integers(0, 255),
        st.integers(-70000, 70000),
        st.integers(-70000, 70000),
        st.integers(0, 0xFFFF),
        st.binary(max_size=100),
        st.none() | st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    )


@st.composite
def records(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for _ in range(draw(st.integers(1, 12))):
        mode = draw(st.integers(0, 7))
        kind = draw(st.sampled_from(["segment", "segment", "mutated", "raw", "empty"]))
        if kind == "empty":
            data = b""
        elif kind == "raw":
            data = draw(st.binary(max_size=80))
        else:
            data = bytearray(draw(segment_near_windows()))
            if kind == "mutated":
                for _ in range(draw(st.integers(1, 4))):
                    i = draw(st.integers(0, len(data) - 1))
                    data[i] = draw(st.integers(0, 255))
                del data[draw(st.integers(0, len(data))) :]
        out.append((mode, bytes(data)[:255]))
    return out


@settings(max_examples=80, deadline=None)
@given(records())
def test_host_receive_path_never_raises_and_counts(recs: list[tuple[int, bytes]]) -> None:
    target = run_input(join(recs))
    stats = target.host.stats
    undecodable = 0
    for _, data in recs:
        try:
            decode_untrusted(data)
        except DecodeError:
            undecodable += 1
    # Rebasing zeroes checksums, so it can only turn a checksum drop into a decodable one.
    assert stats.malformed_drops + stats.checksum_drops <= undecodable


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.bin")), ids=lambda p: p.stem)
def test_corpus_replays(path: Path) -> None:
    data = path.read_bytes()
    for _, datagram in split(data):
        decode_only(datagram)
    run_input(data)
