"""Send and receive buffers, indexed by 64-bit stream offsets.

The state machine converts 32-bit sequence numbers to unwrapped offsets at its edges, so
nothing in here ever compares sequence numbers modulo 2**32. Offset 0 is the SYN; the first
data byte is offset 1.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections import deque


class SendBuffer:
    """Bytes the application handed us that the peer has not acknowledged yet.

    ``una`` is the offset of the first byte held. The bytes sit in chunks of ``CHUNK``
    bytes (the last one may be shorter), the first starting at offset ``_base``, so the
    chunk holding an offset is found by one division, a write copies only what it adds, and
    an acknowledgment drops whole chunks from the front: O(1) per byte written and per
    chunk released, whatever the buffer holds (a single ``bytearray`` moved everything it
    held whenever it grew after a front delete). A partly acknowledged first chunk stays
    until the peer acknowledges all of it, so up to ``CHUNK - 1`` released bytes more than
    ``len()`` may be held.
    """

    CHUNK = 65536
    __slots__ = ("_base", "_chunks", "_len", "capacity", "una")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # A list: chunks are found by index, and an acknowledgment drops them from the front
        # (a pointer move per chunk held, a few hundred at most), while an empty deque would
        # cost 768 bytes per connection (bench/README.md, "Scale").
        self._chunks: list[bytearray] = []
        self._base = 1  # offset of the first chunk's first byte
        self._len = 0
        self.una = 1

    def __len__(self) -> int:
        return self._len

    @property
    def end(self) -> int:
        """Offset just past the last byte written."""
        return self.una + self._len

    @property
    def free(self) -> int:
        return max(0, self.capacity - self._len)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append as much of ``data`` as fits; return how many bytes were taken."""
        n = min(len(data), self.free)
        if not n:
            return 0
        chunks, size = self._chunks, self.CHUNK
        taken = 0
        with memoryview(data) as view:  # slices without copies; each byte is copied once
            if chunks and len(chunks[-1]) < size:
                tail = chunks[-1]
                taken = min(n, size - len(tail))
                tail += view[:taken]
            while taken < n:
                piece = min(n - taken, size)
                chunks.append(bytearray(view[taken : taken + piece]))
                taken += piece
        self._len += n
        return n

    def get(self, start: int, stop: int) -> bytes:
        """The bytes in offsets [start, stop) (clipped to what is held), copied once."""
        una = self.una
        start = max(start, una)
        stop = min(stop, una + self._len)
        if start >= stop:
            return b""
        size = self.CHUNK
        i, lo = divmod(start - self._base, size)
        hi = lo + stop - start
        chunks = self._chunks
        if hi <= size:
            # The temporary views go at once, so the last chunk can still grow.
            return bytes(memoryview(chunks[i])[lo:hi])
        parts = [memoryview(chunks[i])[lo:]]
        for k in range(i + 1, i + 1 + (hi - 1) // size):
            parts.append(memoryview(chunks[k])[: hi - (k - i) * size])
        return b"".join(parts)

    def acknowledge(self, upto: int) -> int:
        """Release every byte below offset ``upto``; return how many were released."""
        n = min(upto - self.una, self._len)
        if n <= 0:
            return 0
        self.una += n
        self._len -= n
        chunks = self._chunks
        while chunks and self._base + len(chunks[0]) <= self.una:
            self._base += len(chunks.pop(0))
        if not chunks:
            self._base = self.una
        return n


# Memory charged per out-of-order block beyond its payload, like Linux's skb truesize: the
# bytearray, its dict entry and key and its slot in the sorted starts cost about this much
# in CPython (tracemalloc: ~180 bytes per 1-byte block), so a peer sending 1-byte segments
# cannot hold a hundred times more memory than it sends payload.
BLOCK_OVERHEAD = 192


class _SortedStarts:
    """A sorted set of ints kept as a list of short sorted buckets (the idea of the
    sortedcontainers package): a lookup is two bisections, an insertion or removal moves at
    most a bucket (2 * LOAD entries) plus one bucket pointer per LOAD entries, so a block
    costs O(log n) comparisons instead of an O(n) list shift."""

    LOAD = 256
    __slots__ = ("_buckets", "_len", "_maxes")

    def __init__(self) -> None:
        self._buckets: list[list[int]] = []
        self._maxes: list[int] = []  # the last entry of each bucket
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def clear(self) -> None:
        self._buckets.clear()
        self._maxes.clear()
        self._len = 0

    def add(self, x: int) -> None:
        buckets, maxes = self._buckets, self._maxes
        self._len += 1
        if not buckets:
            buckets.append([x])
            maxes.append(x)
            return
        i = bisect_left(maxes, x)
        if i == len(maxes):
            i -= 1
            buckets[i].append(x)
            maxes[i] = x
        else:
            insort(buckets[i], x)
        bucket = buckets[i]
        if len(bucket) > 2 * self.LOAD:
            half = bucket[self.LOAD :]
            del bucket[self.LOAD :]
            buckets.insert(i + 1, half)
            maxes[i] = bucket[-1]
            maxes.insert(i + 1, half[-1])

    def remove(self, x: int) -> None:
        i = bisect_left(self._maxes, x)
        bucket = self._buckets[i]
        del bucket[bisect_left(bucket, x)]
        self._len -= 1
        if bucket:
            self._maxes[i] = bucket[-1]
        else:
            del self._buckets[i]
            del self._maxes[i]

    def first(self) -> int | None:
        return self._buckets[0][0] if self._buckets else None

    def last(self) -> int | None:
        return self._maxes[-1] if self._maxes else None

    def floor(self, x: int) -> int | None:
        """The largest entry <= x."""
        maxes = self._maxes
        i = bisect_left(maxes, x)
        if i < len(maxes):
            bucket = self._buckets[i]
            j = bisect_right(bucket, x)
            if j:
                return bucket[j - 1]
        return maxes[i - 1] if i > 0 else None

    def lower(self, x: int) -> int | None:
        """The largest entry < x."""
        return self.floor(x - 1)

    def higher(self, x: int) -> int | None:
        """The smallest entry > x."""
        maxes = self._maxes
        i = bisect_right(maxes, x)
        if i == len(maxes):
            return None
        bucket = self._buckets[i]
        return bucket[bisect_right(bucket, x)]


class ByteQueue:
    """In-order bytes waiting for the application, as the chunks they arrived in.

    Each chunk is copied once in and once out: a read joins what it takes (a read of one
    whole chunk hands it over as it is), and nothing already held moves when more arrives
    or part is read (a single ``bytearray`` deleted from its front on a partial read, and
    the next append that outgrew the allocation moved everything still held). Chunks
    under ``SMALL`` bytes are gathered into a growing ``bytearray`` so that tiny segments
    do not cost a Python object each.
    """

    SMALL = 1024
    __slots__ = ("_chunks", "_len", "_off")

    def __init__(self) -> None:
        # Only while bytes are held: an empty deque costs 768 bytes, and most connections of
        # a busy server have nothing waiting to be read (bench/README.md, "Scale").
        self._chunks: deque[bytes | bytearray] | None = None
        self._len = 0
        self._off = 0  # bytes of the first chunk already read

    def __len__(self) -> int:
        return self._len

    def append(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if not n:
            return
        chunks = self._chunks
        if chunks is None:
            chunks = self._chunks = deque()
        if n >= self.SMALL:
            chunks.append(data if type(data) is bytes else bytes(data))
        elif chunks and type(tail := chunks[-1]) is bytearray and len(tail) < 65536:
            tail += data
        else:
            chunks.append(bytearray(data))
        self._len += n

    def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` from the front."""
        n = min(max_bytes, self._len)
        if n <= 0:
            return b""
        chunks, off = self._chunks, self._off
        assert chunks is not None  # bytes are held
        first = chunks[0]
        left = len(first) - off
        if n <= left:
            if n == left:
                chunks.popleft()
                self._off = 0
                if not chunks:
                    self._chunks = None
                if not off and type(first) is bytes:
                    self._len -= n
                    return first
            else:
                self._off = off + n
            self._len -= n
            return bytes(memoryview(first)[off : off + n])
        parts = [memoryview(first)[off:]]
        chunks.popleft()
        self._off = 0
        got = left
        while got < n:
            chunk = chunks[0]
            need = n - got
            if len(chunk) <= need:
                parts.append(memoryview(chunk))
                chunks.popleft()
                got += len(chunk)
            else:
                parts.append(memoryview(chunk)[:need])
                self._off = need
                got = n
        self._len -= n
        if not chunks:
            self._chunks = None
        return b"".join(parts)


class ReceiveBuffer:
    """In-order bytes waiting for the application plus out-of-order blocks above a hole.

    Out-of-order data is kept as disjoint, non-adjacent blocks: their starts in a sorted
    set (_SortedStarts, O(log n) per block) and their bytes in a dict keyed by start. The
    caller passes the right window edge to every insert, and ``memory_limit`` caps what the
    blocks cost (payload plus BLOCK_OVERHEAD each): above it the highest blocks are dropped
    (RFC 2018 8 lets a receiver discard data it has SACKed, "reneging").
    """

    __slots__ = (
        "_blocks",
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
        self.ready = ByteQueue()
        self._starts = _SortedStarts()
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
        return self.ready.read(max_bytes)

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
            self.ready.append(data)
            self.nxt = end
            return end - start + self._pull_in_order()
        self._insert_ooo(start, end, data)
        self._enforce_limit()
        return 0

    def _end(self, start: int) -> int:
        return start + len(self._blocks[start])

    def _remove(self, start: int) -> bytearray:
        self._starts.remove(start)
        block = self._blocks.pop(start)
        self.ooo_bytes -= len(block)
        self.ooo_memory -= len(block) + BLOCK_OVERHEAD
        return block

    def _pull_in_order(self) -> int:
        moved = 0
        while (start := self._starts.first()) is not None and start <= self.nxt:
            block = self._remove(start)
            tail = block[self.nxt - start :]
            if tail:
                self.ready.append(tail)
                self.nxt += len(tail)
                moved += len(tail)
        return moved

    def _insert_ooo(self, start: int, end: int, data: bytes | memoryview) -> None:
        blocks = self._blocks
        first = self._starts.floor(start)
        if first is not None and self._end(first) >= start:
            # Overlaps or touches that block: extend it at the end (the common case of
            # in-order arrival after a hole costs only the new bytes).
            block_end = self._end(first)
            if end > block_end:
                blocks[first] += data[block_end - start :]
                self.ooo_bytes += end - block_end
                self.ooo_memory += end - block_end
        else:
            first = start
            self._starts.add(start)
            blocks[start] = bytearray(data)
            self.ooo_bytes += end - start
            self.ooo_memory += end - start + BLOCK_OVERHEAD
        # Absorb following blocks that the grown block now reaches.
        while (nstart := self._starts.higher(first)) is not None and nstart <= self._end(first):
            nblock = self._remove(nstart)
            cur_end = self._end(first)
            nend = nstart + len(nblock)
            if nend > cur_end:
                blocks[first] += nblock[cur_end - nstart :]
                self.ooo_bytes += nend - cur_end
                self.ooo_memory += nend - cur_end
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
        while self.ooo_memory > limit and (top := self._starts.last()) is not None:
            self.reneged_bytes += len(self._remove(top))

    def renege(self) -> int:
        """Drop every out-of-order block, as a receiver under memory pressure may (RFC 2018
        8: SACKed data is not acknowledged until the cumulative ACK passes it). Returns the
        bytes dropped."""
        dropped = self.ooo_bytes
        self._starts.clear()
        self._blocks.clear()
        self._recent.clear()
        self.ooo_bytes = 0
        self.ooo_memory = 0
        self.reneged_bytes += dropped
        return dropped

    def held(self, start: int, end: int) -> tuple[int, int] | None:
        """The first run of [start, end) already held out of order (above ``nxt``), if any."""
        first = self._starts.floor(start)
        if first is not None and start < self._end(first):
            return start, min(end, self._end(first))
        nxt = self._starts.higher(start)
        if nxt is not None and nxt < end:
            return nxt, min(end, self._end(nxt))
        return None

    def sack_blocks(self, max_blocks: int) -> list[tuple[int, int]]:
        """Up to ``max_blocks`` (start, end) offset ranges held above ``nxt``.

        RFC 2018 4: the first block holds the most recently received segment, the next ones
        repeat the most recently reported blocks; remaining room goes to the highest blocks.
        """
        if not self._blocks or max_blocks <= 0:
            return []
        out: list[tuple[int, int]] = []
        seen: set[int] = set()
        alive: list[int] = []
        for off in self._recent:
            first = self._starts.floor(off)
            if first is None or off >= self._end(first):
                continue
            alive.append(off)
            if first not in seen and len(out) < max_blocks:
                seen.add(first)
                out.append((first, self._end(first)))
        self._recent = alive
        top = self._starts.last()
        while len(out) < max_blocks and top is not None:
            if top not in seen:
                out.append((top, self._end(top)))
            top = self._starts.lower(top)
        return out
