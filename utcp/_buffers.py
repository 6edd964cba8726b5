"""Send and receive buffers, indexed by 64-bit stream offsets.

The state machine converts 32-bit sequence numbers to unwrapped offsets at its edges, so
nothing in here ever compares sequence numbers modulo 2**32. Offset 0 is the SYN; the first
data byte is offset 1.
"""

from __future__ import annotations

from bisect import bisect_right


class SendBuffer:
    """Bytes the application handed us that the peer has not acknowledged yet.

    ``una`` is the offset of the first byte held; bytes are released from the front as the
    peer acknowledges them (``bytearray`` deletes from the front in amortised O(1)).
    """

    __slots__ = ("_data", "capacity", "una")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data = bytearray()
        self.una = 1

    def __len__(self) -> int:
        return len(self._data)

    @property
    def end(self) -> int:
        """Offset just past the last byte written."""
        return self.una + len(self._data)

    @property
    def free(self) -> int:
        return max(0, self.capacity - len(self._data))

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append as much of ``data`` as fits; return how many bytes were taken."""
        n = min(len(data), self.free)
        if n:
            self._data += data[:n]
        return n

    def get(self, start: int, stop: int) -> bytes:
        """The bytes in offsets [start, stop) (clipped to what is held)."""
        lo = max(start - self.una, 0)
        return bytes(self._data[lo : max(stop - self.una, lo)])

    def acknowledge(self, upto: int) -> int:
        """Release every byte below offset ``upto``; return how many were released."""
        n = min(upto - self.una, len(self._data))
        if n <= 0:
            return 0
        del self._data[:n]
        self.una += n
        return n


class ReceiveBuffer:
    """In-order bytes waiting for the application plus out-of-order blocks above a hole.

    Out-of-order data is kept as disjoint, non-adjacent blocks sorted by offset. The caller
    passes the right window edge to every insert, so memory is bounded by what we advertised.
    """

    __slots__ = ("_blocks", "_recent", "_starts", "fin_offset", "nxt", "ooo_bytes", "ready")

    def __init__(self, nxt: int = 1) -> None:
        self.nxt = nxt
        self.ready = bytearray()
        self._starts: list[int] = []
        self._blocks: list[bytearray] = []
        self._recent: list[int] = []
        self.ooo_bytes = 0
        self.fin_offset: int | None = None

    def __len__(self) -> int:
        return len(self.ready)

    def read(self, max_bytes: int) -> bytes:
        chunk = bytes(self.ready[:max_bytes])
        del self.ready[:max_bytes]
        return chunk

    @property
    def has_gap(self) -> bool:
        return bool(self._starts)

    def insert(self, offset: int, data: bytes | memoryview, limit: int) -> int:
        """Store ``data`` found at ``offset``, trimmed to [nxt, limit).

        Returns how many bytes became in-order (``nxt`` moved by that much). Bytes already
        held are kept as first received (RFC 9293 3.10.7.4: duplicates are trimmed).
        """
        start, end = offset, min(offset + len(data), limit)
        if start < self.nxt:
            data = data[self.nxt - start :]
            start = self.nxt
        if start >= end:
            return 0
        data = data[: end - start]
        if start == self.nxt:
            self.ready += data
            self.nxt = end
            return end - start + self._pull_in_order()
        self._insert_ooo(start, end, data)
        return 0

    def _pull_in_order(self) -> int:
        moved = 0
        while self._starts and self._starts[0] <= self.nxt:
            start = self._starts.pop(0)
            block = self._blocks.pop(0)
            self.ooo_bytes -= len(block)
            tail = block[self.nxt - start :]
            if tail:
                self.ready += tail
                self.nxt += len(tail)
                moved += len(tail)
        return moved

    def _insert_ooo(self, start: int, end: int, data: bytes | memoryview) -> None:
        starts, blocks = self._starts, self._blocks
        i = bisect_right(starts, start) - 1
        if i >= 0 and starts[i] + len(blocks[i]) >= start:
            # Overlaps or touches block i: extend it at the end (the common case of
            # in-order arrival after a hole costs only the new bytes).
            block_end = starts[i] + len(blocks[i])
            if end > block_end:
                blocks[i] += data[block_end - start :]
                self.ooo_bytes += end - block_end
        else:
            i += 1
            starts.insert(i, start)
            blocks.insert(i, bytearray(data))
            self.ooo_bytes += end - start
        # Absorb following blocks that the grown block i now reaches.
        while i + 1 < len(starts) and starts[i + 1] <= starts[i] + len(blocks[i]):
            nstart = starts.pop(i + 1)
            nblock = blocks.pop(i + 1)
            cur_end = starts[i] + len(blocks[i])
            nend = nstart + len(nblock)
            self.ooo_bytes -= len(nblock)
            if nend > cur_end:
                blocks[i] += nblock[cur_end - nstart :]
                self.ooo_bytes += nend - cur_end
        # RFC 2018 4: remember the block holding the newest segment, most recent first.
        if start in self._recent:
            self._recent.remove(start)
        self._recent.insert(0, start)
        del self._recent[8:]

    def renege(self) -> int:
        """Drop every out-of-order block, as a receiver under memory pressure may (RFC 2018
        8: SACKed data is not acknowledged until the cumulative ACK passes it). Returns the
        bytes dropped."""
        dropped = self.ooo_bytes
        self._starts.clear()
        self._blocks.clear()
        self._recent.clear()
        self.ooo_bytes = 0
        return dropped

    def held(self, start: int, end: int) -> tuple[int, int] | None:
        """The first run of [start, end) already held out of order (above ``nxt``), if any."""
        starts, blocks = self._starts, self._blocks
        i = bisect_right(starts, start) - 1
        if i >= 0 and start < starts[i] + len(blocks[i]):
            return start, min(end, starts[i] + len(blocks[i]))
        if i + 1 < len(starts) and starts[i + 1] < end:
            return starts[i + 1], min(end, starts[i + 1] + len(blocks[i + 1]))
        return None

    def sack_blocks(self, max_blocks: int) -> list[tuple[int, int]]:
        """Up to ``max_blocks`` (start, end) offset ranges held above ``nxt``.

        RFC 2018 4: the first block holds the most recently received segment, the next ones
        repeat the most recently reported blocks; remaining room goes to the highest blocks.
        """
        if not self._starts or max_blocks <= 0:
            return []
        out: list[tuple[int, int]] = []
        seen: set[int] = set()
        alive: list[int] = []
        for off in self._recent:
            i = bisect_right(self._starts, off) - 1
            if i < 0 or off >= self._starts[i] + len(self._blocks[i]):
                continue
            alive.append(off)
            if i not in seen and len(out) < max_blocks:
                seen.add(i)
                out.append((self._starts[i], self._starts[i] + len(self._blocks[i])))
        self._recent = alive
        i = len(self._starts) - 1
        while len(out) < max_blocks and i >= 0:
            if i not in seen:
                out.append((self._starts[i], self._starts[i] + len(self._blocks[i])))
            i -= 1
        return out
