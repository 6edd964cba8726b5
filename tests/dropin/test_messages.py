"""``utcp.MessageStream``: msgpack messages over trio streams, with untrusted input bounded."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
import trio
import trio.testing

import utcp
from utcp.testing import LinkConfig, TrioNetwork, sim_stream_pair, udp_stream_pair

NESTED = {
    "name": "sensor-7",
    "readings": [1, -2, 3.5, None, True, "x" * 300],
    "blob": bytes(range(256)) * 40,
    "nested": {"a": [[], {}, [b"", b"\x00\xff"]], "deep": [[[[["leaf"]]]]]},
    "big": 2**63 - 1,
    "neg": -(2**63),
}


class CountingStream(trio.abc.HalfCloseableStream):
    """A stream that counts the bytes its user took out of ``inner``."""

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self.inner = inner
        self.taken = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self.inner.receive_some(max_bytes)
        self.taken += len(data)
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_nested_structures_and_binary_payloads_round_trip() -> None:
    client, server = await udp_stream_pair()
    a, b = utcp.MessageStream(client), utcp.MessageStream(server)
    async with a, b:
        await a.send(NESTED)
        await a.send([b"\x00" * 100_000, {"k": b"\x80"}])
        assert await b.receive() == NESTED
        assert await b.receive() == [b"\x00" * 100_000, {"k": b"\x80"}]
        await b.send("reply")
        assert await a.receive() == "reply"


async def test_ten_thousand_small_messages_in_order_then_end_of_iteration() -> None:
    client, server = await udp_stream_pair()
    sender, receiver = utcp.MessageStream(client), utcp.MessageStream(server)
    got: list[object] = []

    async def send_all_then_eof() -> None:
        for i in range(10_000):
            await sender.send([i, "m"])
        await sender.send_eof()

    async with sender, receiver, trio.open_nursery() as nursery:
        nursery.start_soon(send_all_then_eof)
        async for message in receiver:
            got.append(message)
    assert got == [[i, "m"] for i in range(10_000)]


async def test_messages_split_across_segments_at_every_boundary(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Each split point k sends blob[:k] as its own segment, waits until it has been
    # delivered and acknowledged, then sends the rest: the receiver sees every possible cut.
    net = TrioNetwork(seed=3, link=LinkConfig(delay=0.005))
    try:
        client, server = await sim_stream_pair(net)
        messages = [NESTED["nested"], b"\x01\x02", "é" * 20, 7, {"x": [1.5, None]}]
        blob = b"".join(msgpack.packb(m) for m in messages)
        receiver = utcp.MessageStream(server)
        for k in range(1, len(blob)):
            segments_before = client.conn.stats.segments_sent
            await client.send_all(blob[:k])
            await trio.sleep(0.1)
            assert client.conn.bytes_in_flight == 0 and client.conn.unsent == 0
            await client.send_all(blob[k:])
            assert client.conn.stats.segments_sent >= segments_before + 2
            assert [await receiver.receive() for _ in messages] == messages
        await client.aclose()
        await receiver.aclose()
    finally:
        net.close()


@pytest.mark.parametrize(
    "garbage",
    [b"\xc1", b"\x91" * 5000, b"\xa2\xff\xfe"],  # never-used byte, too deep, bad UTF-8
    ids=["reserved-byte", "too-deep", "bad-utf8"],
)
async def test_garbage_raises_message_error_and_closes(garbage: bytes) -> None:
    client, server = await udp_stream_pair()
    receiver = utcp.MessageStream(server)
    await client.send_all(msgpack.packb("fine") + garbage)
    assert await receiver.receive() == "fine"
    with trio.fail_after(5), pytest.raises(utcp.MessageError, match="not msgpack"):
        await receiver.receive()
    with pytest.raises(trio.ClosedResourceError):
        await receiver.receive()
    assert server._closed  # the underlying stream was closed too
    await client.aclose()


@pytest.mark.parametrize("declared", [5000, 2**31], ids=["5kB", "2GB-declared"])
async def test_oversized_message_is_refused_with_bounded_buffering(declared: int) -> None:
    client, server = await udp_stream_pair()
    counting = CountingStream(server)
    receiver = utcp.MessageStream(counting, max_message_size=1000)
    header = b"\xc6" + declared.to_bytes(4, "big")  # bin 32 of `declared` bytes

    async def send_until_reset() -> None:
        with contextlib.suppress(trio.BrokenResourceError):  # the receiver closes: a RST
            await client.send_all(header + b"z" * 20_000)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_until_reset)
        with trio.fail_after(5), pytest.raises(utcp.MessageError, match="max_message_size"):
            await receiver.receive()
        nursery.cancel_scope.cancel()
    assert counting.taken <= 1000  # never more than the limit was read and held
    await client.aclose()


async def test_stream_ending_inside_a_message_is_an_error() -> None:
    client, server = await udp_stream_pair()
    receiver = utcp.MessageStream(server)
    await client.send_all(msgpack.packb([1, 2, 3])[:-1])
    await client.send_eof()
    with trio.fail_after(5), pytest.raises(utcp.MessageError, match="ended inside"):
        await receiver.receive()
    await client.aclose()


async def test_sending_an_oversized_message_is_refused_locally() -> None:
    left, right = trio.testing.memory_stream_pair()
    messages = utcp.MessageStream(left, max_message_size=100)
    with pytest.raises(ValueError, match="exceeds max_message_size"):
        await messages.send(b"x" * 200)
    await messages.send(b"x" * 50)  # works over any trio stream
    assert await utcp.MessageStream(right).receive() == b"x" * 50
