"""The send buffer's chunks behave exactly like one flat byte string: writes, reads of any
range (inside a chunk, across chunk boundaries, at the edges), partial and whole
acknowledgments, draining to empty and writing again. Checked against a ``bytearray``
model with random operations, on a tiny chunk size so every boundary is crossed often.
The receive side's in-order queue (``ByteQueue``) likewise, for appends of every size and
reads that end inside, at the end of, or beyond a chunk."""

from __future__ import annotations

import random

import pytest

from utcp._buffers import ByteQueue, ReceiveBuffer, SendBuffer


class TinyChunks(SendBuffer):
    CHUNK = 7
    __slots__ = ()


def model_check(buf: SendBuffer, model: bytearray, una: int) -> None:
    assert buf.una == una
    assert len(buf) == len(model)
    assert buf.end == una + len(model)
    assert buf.free == max(0, buf.capacity - len(model))
    assert buf.get(una, una + len(model)) == bytes(model)


def test_get_across_chunk_boundaries() -> None:
    buf = TinyChunks(100)
    data = bytes(range(30))
    assert buf.write(data) == 30
    for start in range(1, 32):
        for stop in range(start, 33):
            assert buf.get(start, stop) == data[start - 1 : stop - 1], (start, stop)


def test_small_writes_fill_the_last_chunk_before_a_new_one() -> None:
    buf = TinyChunks(100)
    for i in range(20):
        buf.write(bytes([i]))
    assert len(buf._chunks) == 3  # 7 + 7 + 6, not 20 chunks of one byte
    assert buf.get(1, 21) == bytes(range(20))


def test_partial_acknowledgment_keeps_the_rest_readable() -> None:
    buf = TinyChunks(100)
    buf.write(b"abcdefghijklmnop")
    assert buf.acknowledge(4) == 3  # offsets 1..3
    assert buf.una == 4 and len(buf) == 13
    assert buf.get(1, 10) == b"defghi"  # clipped to what is held
    assert buf.acknowledge(4) == 0 and buf.acknowledge(2) == 0
    assert buf.acknowledge(9) == 5
    assert len(buf._chunks) == 2  # the first whole chunk (offsets 1..7) is released
    assert buf.get(9, 100) == b"ijklmnop"


def test_draining_to_empty_and_writing_again() -> None:
    buf = TinyChunks(10)
    assert buf.write(b"x" * 25) == 10  # capacity
    assert buf.free == 0 and buf.write(b"y") == 0
    assert buf.acknowledge(100) == 10  # beyond the end: clipped
    assert len(buf) == 0 and not buf._chunks and buf.una == 11
    assert buf.write(b"0123456789") == 10
    assert buf.get(11, 21) == b"0123456789"
    assert buf.get(15, 17) == b"45"
    assert buf.get(21, 30) == b"" and buf.get(5, 11) == b""


def test_writes_take_memoryviews_and_bytearrays() -> None:
    buf = SendBuffer(1 << 20)
    source = bytearray(b"q" * 70_000)
    assert buf.write(memoryview(source)[:69_999]) == 69_999
    assert buf.write(source) == 70_000
    source[:] = b"r" * 70_000  # the buffer keeps its own copy, and no export pins it
    assert buf.get(1, 140_000) == b"q" * 139_999


@pytest.mark.parametrize("chunk", [7, 64, 65536])
@pytest.mark.parametrize("seed", range(4))
def test_random_operations_match_a_flat_model(chunk: int, seed: int) -> None:
    rng = random.Random(seed)
    buf_type = type("Chunks", (SendBuffer,), {"CHUNK": chunk, "__slots__": ()})
    capacity = rng.choice([50, 1000, 200_000])
    buf: SendBuffer = buf_type(capacity)
    model = bytearray()
    una = 1
    for step in range(400):
        op = rng.random()
        if op < 0.45:
            data = rng.randbytes(rng.choice([1, 3, chunk - 1, chunk, chunk + 1, 2 * chunk + 5]))
            n = buf.write(data)
            assert n == min(len(data), max(0, capacity - len(model)))
            model += data[:n]
        elif op < 0.75:
            upto = una + rng.randrange(-3, len(model) + 4)
            released = buf.acknowledge(upto)
            expected = max(0, min(upto - una, len(model)))
            assert released == expected, step
            del model[:expected]
            una += expected
        else:
            start = una + rng.randrange(-2, len(model) + 2)
            stop = start + rng.randrange(0, 3 * chunk + 2)
            lo, hi = max(start - una, 0), max(min(stop - una, len(model)), 0)
            assert buf.get(start, stop) == bytes(model[lo:hi]), step
        model_check(buf, model, una)


def test_a_read_of_one_whole_chunk_hands_it_over_without_a_copy() -> None:
    queue = ByteQueue()
    data = bytes(range(256)) * 8
    queue.append(memoryview(data))
    queue.append(b"z" * 5000)
    first = queue.read(len(data))
    assert first == data and len(queue) == 5000
    chunk = queue._chunks[0]
    assert queue.read(5000) is chunk  # the bytes object itself
    assert len(queue) == 0 and queue.read(10) == b"" and not queue


def test_small_appends_share_a_chunk() -> None:
    queue = ByteQueue()
    for i in range(3000):
        queue.append(bytes([i % 256]))
    assert len(queue._chunks) == 1 and len(queue) == 3000
    assert queue.read(3000) == bytes(i % 256 for i in range(3000))


@pytest.mark.parametrize("seed", range(6))
def test_byte_queue_matches_a_flat_model(seed: int) -> None:
    rng = random.Random(seed)
    queue = ByteQueue()
    model = bytearray()
    for step in range(600):
        if rng.random() < 0.55:
            size = rng.choice([0, 1, 7, 1023, 1024, 1025, 5000, 65475, 70000])
            data = rng.randbytes(size)
            kind = rng.choice([bytes, bytearray, memoryview])
            queue.append(kind(data))
            model += data
        else:
            n = rng.choice([1, 5, 1024, 4096, 65536, 1 << 20, len(model), len(model) + 1])
            assert queue.read(n) == bytes(model[:n]), step
            del model[:n]
        assert len(queue) == len(model) and bool(queue) == bool(model)
    assert queue.read(1 << 30) == bytes(model)


def test_receive_buffer_reads_what_it_was_given_in_order() -> None:
    rng = random.Random(9)
    stream = rng.randbytes(300_000)
    rb = ReceiveBuffer()
    got = bytearray()
    offsets = list(range(0, len(stream), 1448))
    rng.shuffle(offsets)  # out of order: blocks, then pulled in order
    for off in offsets:
        rb.insert(1 + off, memoryview(stream)[off : off + 1448], 1 + len(stream))
        if rng.random() < 0.3:
            got += rb.read(rng.choice([100, 5000, 70000]))
    got += rb.read(1 << 30)
    assert bytes(got) == stream and rb.nxt == 1 + len(stream)
