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


# Memory charged per out-of-order block beyond its payload, like Linux's skb truesize: the
# bytearray, its dict entry and key and its slot in the sorted list cost about this much in
# CPython (tracemalloc: ~180 bytes per 1-byte block), so a peer sending 1-byte segments
# cannot hold a hundred times more memory than it sends payload.
BLOCK_OVERHEAD = 192


class ReceiveBuffer:
    """In-order bytes waiting for the application plus out-of-order blocks above a hole.

    Out-of-order data is kept as disjoint, non-adjacent blocks: their starts in a sorted
    list searched with bisect (consumed from the front by advancing ``_head``, so pulling
    blocks in order costs O(1) each) and their bytes in a dict keyed by start. The caller
    passes the right window edge to every insert, and ``memory_limit`` caps what the
    blocks cost (payload plus BLOCK_OVERHEAD each): above it the highest blocks are dropped
    (RFC 2018 8 lets a receiver discard data it has SACKed, "reneging"), so the number of
    blocks, and the cost of the sorted list's insertions, stays bounded.
    """

    __slots__ = (
        "_blocks",
        "_head",
        "_recent",
        "_starts",
        "fin_offset",
        "memory_limit",
        "nxt",
        "ooo_bytes",
        "ooo_memory",
        "ready",
        "reneged_bytes",
    )

    def __init__(self, nxt: int = 1, memory_limit: int | None = None) -> None:
        self.nxt = nxt
        self.ready = bytearray()
        self._starts: list[int] = []  # sorted; entries before _head are consumed
        self._head = 0
        self._blocks: dict[int, bytearray] = {}
        self._recent: list[int] = []
        self.ooo_bytes = 0  # payload bytes held out of order
        self.ooo_memory = 0  # what they cost: payload + BLOCK_OVERHEAD per block
        self.memory_limit = memory_limit
        self.reneged_bytes = 0  # out-of-order bytes dropped to stay within memory_limit
        self.fin_offset: int | None = None

    def __len__(self) -> int:
        return len(self.ready)

    def read(self, max_bytes: int) -> bytes:
        chunk = bytes(self.ready[:max_bytes])
        del self.ready[:max_bytes]
        return chunk

    @property
    def has_gap(self) -> bool:
        return bool(self._blocks)

    @property
    def blocks(self) -> int:
        """How many out-of-order blocks are held."""
        return len(self._blocks)

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
        self._enforce_limit()
        return 0

    def _end(self, start: int) -> int:
        return start + len(self._blocks[start])

    def _remove(self, start: int) -> bytearray:
        block = self._blocks.pop(start)
        self.ooo_bytes -= len(block)
        self.ooo_memory -= len(block) + BLOCK_OVERHEAD
        return block

    def _pull_in_order(self) -> int:
        moved = 0
        starts = self._starts
        while self._head < len(starts) and starts[self._head] <= self.nxt:
            start = starts[self._head]
            self._head += 1
            block = self._remove(start)
            tail = block[self.nxt - start :]
            if tail:
                self.ready += tail
                self.nxt += len(tail)
                moved += len(tail)
        if self._head > 64 and 2 * self._head > len(starts):
            del starts[: self._head]  # amortised O(1) per block consumed
            self._head = 0
        return moved

    def _insert_ooo(self, start: int, end: int, data: bytes | memoryview) -> None:
        starts, blocks = self._starts, self._blocks
        i = bisect_right(starts, start, self._head) - 1
        if i >= self._head and self._end(starts[i]) >= start:
            # Overlaps or touches block i: extend it at the end (the common case of
            # in-order arrival after a hole costs only the new bytes).
            block_end = self._end(starts[i])
            if end > block_end:
                blocks[starts[i]] += data[block_end - start :]
                self.ooo_bytes += end - block_end
                self.ooo_memory += end - block_end
        else:
            i += 1
            starts.insert(i, start)
            blocks[start] = bytearray(data)
            self.ooo_bytes += end - start
            self.ooo_memory += end - start + BLOCK_OVERHEAD
        # Absorb following blocks that the grown block i now reaches.
        first = starts[i]
        j = i + 1
        while j < len(starts) and starts[j] <= self._end(first):
            nstart = starts[j]
            nblock = self._remove(nstart)
            cur_end = self._end(first)
            nend = nstart + len(nblock)
            if nend > cur_end:
                blocks[first] += nblock[cur_end - nstart :]
                self.ooo_bytes += nend - cur_end
                self.ooo_memory += nend - cur_end
            j += 1
        del starts[i + 1 : j]
        # RFC 2018 4: remember the block holding the newest segment, most recent first.
        if start in self._recent:
            self._recent.remove(start)
        self._recent.insert(0, start)
        del self._recent[8:]

    def _enforce_limit(self) -> None:
        """RFC 2018 8 (reneging): over the memory limit, drop the highest blocks first,
        which the sender needs last."""
        limit = self.memory_limit
        if limit is None:
            return
        starts = self._starts
        while self.ooo_memory > limit and len(starts) > self._head:
            self.reneged_bytes += len(self._remove(starts.pop()))

    def renege(self) -> int:
        """Drop every out-of-order block, as a receiver under memory pressure may (RFC 2018
        8: SACKed data is not acknowledged until the cumulative ACK passes it). Returns the
        bytes dropped."""
        dropped = self.ooo_bytes
        self._starts.clear()
        self._head = 0
        self._blocks.clear()
        self._recent.clear()
        self.ooo_bytes = 0
        self.ooo_memory = 0
        self.reneged_bytes += dropped
        return dropped

    def held(self, start: int, end: int) -> tuple[int, int] | None:
        """The first run of [start, end) already held out of order (above ``nxt``), if any."""
        starts = self._starts
        i = bisect_right(starts, start, self._head) - 1
        if i >= self._head and start < self._end(starts[i]):
            return start, min(end, self._end(starts[i]))
        if i + 1 < len(starts) and starts[i + 1] < end:
            return starts[i + 1], min(end, self._end(starts[i + 1]))
        return None

    def sack_blocks(self, max_blocks: int) -> list[tuple[int, int]]:
        """Up to ``max_blocks`` (start, end) offset ranges held above ``nxt``.

        RFC 2018 4: the first block holds the most recently received segment, the next ones
        repeat the most recently reported blocks; remaining room goes to the highest blocks.
        """
        if not self._blocks or max_blocks <= 0:
            return []
        starts = self._starts
        out: list[tuple[int, int]] = []
        seen: set[int] = set()
        alive: list[int] = []
        for off in self._recent:
            i = bisect_right(starts, off, self._head) - 1
            if i < self._head or off >= self._end(starts[i]):
                continue
            alive.append(off)
            if i not in seen and len(out) < max_blocks:
                seen.add(i)
                out.append((starts[i], self._end(starts[i])))
        self._recent = alive
        i = len(starts) - 1
        while len(out) < max_blocks and i >= self._head:
            if i not in seen:
                out.append((starts[i], self._end(starts[i])))
            i -= 1
        return out
