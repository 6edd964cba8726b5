"""``MessageStream``: msgpack messages over any trio byte stream.

msgpack values delimit themselves, so messages go on the stream back to back with no length
prefix and the receiving side parses them with msgpack's streaming ``Unpacker``. What the
peer sends is untrusted: the receiver never buffers more than ``max_message_size`` bytes of
an unfinished message, and garbage, an oversized message or a stream that ends inside a
message raise ``MessageError`` (a ``trio.BrokenResourceError``) and close the stream.
"""

from __future__ import annotations

from typing import Any, NoReturn

import msgpack
import trio

DEFAULT_MAX_MESSAGE_SIZE = 1 << 20
RECEIVE_SIZE = 65536


class MessageError(trio.BrokenResourceError):
    """The peer sent something that is not a msgpack message within the size limit."""


class MessageStream(trio.abc.Channel[Any]):
    """Send and receive msgpack-serializable objects over ``stream``.

    ``await send(obj)``, ``await receive()`` and ``async for obj in messages`` (which ends
    when the peer closes its sending side); a ``trio.abc.Channel``, so it fits wherever a
    trio memory channel does. Objects are what msgpack packs (None, bool, int, float, str,
    bytes, lists/tuples, dicts with str or bytes keys); tuples arrive as lists.

    ``max_message_size`` bounds one encoded message in both directions: ``send`` refuses a
    bigger one with ValueError, and ``receive`` raises ``MessageError`` and closes the stream
    when the peer's message would exceed it.
    """

    def __init__(
        self, stream: trio.abc.Stream, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    ) -> None:
        if max_message_size < 1:
            raise ValueError("max_message_size must be positive")
        self.stream = stream
        self.max_message_size = max_message_size
        self._packer = msgpack.Packer(use_bin_type=True)
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max_message_size)
        self._fed = 0  # bytes given to the unpacker
        self._consumed = 0  # bytes of the messages it returned (tell() after each one)
        self._closed = False

    async def send(self, value: Any) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this MessageStream was closed")
        data = self._packer.pack(value)
        if len(data) > self.max_message_size:
            raise ValueError(
                f"message of {len(data)} bytes exceeds max_message_size={self.max_message_size}"
            )
        await self.stream.send_all(data)

    async def send_eof(self) -> None:
        """Close the sending direction (the peer's iteration ends); needs a half-closeable
        stream."""
        if not isinstance(self.stream, trio.abc.HalfCloseableStream):
            raise TypeError("send_eof needs a trio.abc.HalfCloseableStream")
        await self.stream.send_eof()

    async def receive(self) -> Any:
        """The next message; ``trio.EndOfChannel`` once the peer closed cleanly."""
        if self._closed:
            raise trio.ClosedResourceError("this MessageStream was closed")
        unpacker = self._unpacker
        while True:
            try:
                value = next(unpacker)
            except StopIteration:
                pass
            except (msgpack.UnpackException, ValueError) as exc:
                await self._fail(f"the peer sent data that is not msgpack ({exc!r})", exc)
            else:
                self._consumed = unpacker.tell()
                await trio.lowlevel.checkpoint()
                return value
            held = self._fed - self._consumed
            room = self.max_message_size - held
            if room <= 0:
                await self._fail(
                    f"the peer sent a message over max_message_size={self.max_message_size}"
                )
            data = await self.stream.receive_some(min(RECEIVE_SIZE, room))
            if not data:
                if held:
                    await self._fail(f"the stream ended inside a message ({held} bytes held)")
                raise trio.EndOfChannel
            unpacker.feed(data)
            self._fed += len(data)

    async def _fail(self, reason: str, cause: BaseException | None = None) -> NoReturn:
        error = MessageError(reason)
        error.__cause__ = cause
        self._closed = True
        self._unpacker = msgpack.Unpacker(max_buffer_size=1)  # drop what was held
        with trio.CancelScope(shield=True):
            await self.stream.aclose()
        raise error

    async def aclose(self) -> None:
        self._closed = True
        await self.stream.aclose()
