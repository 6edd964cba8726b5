"""The sender's scoreboard: what is in flight, SACKed, or deemed lost (RFC 6675).

It works on stream offsets only and never sees payload. Every operation an ACK triggers is
amortised O(1) or O(log n) in the number of segments in flight: segments leave from the
front on cumulative ACKs, SACK blocks only touch the segments they newly cover (the runs
SACKed before are skipped, tests/core/test_ack_cost.py counts the work), and loss
detection (RACK, ``_rack``) walks them forward only.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterator

# RFC 6675 2 / RFC 5681 3.2: DupThresh.
DUP_THRESH = 3


class SentSegment:
    """One transmitted segment: offsets [start, end); ``fin`` if its last offset is our FIN."""

    __slots__ = (
        "acked",
        "delivered",
        "end",
        "fin",
        "first_xmit_time",
        "lost",
        "retransmits",
        "sacked",
        "start",
        "xmit_time",
    )

    def __init__(self, start: int, end: int, now: float, fin: bool) -> None:
        self.start = start
        self.end = end
        self.fin = fin
        self.xmit_time = now
        self.first_xmit_time = now
        self.retransmits = 0
        self.sacked = False
        self.lost = False
        self.delivered = 0  # bytes the connection had delivered when this was sent
        self.acked = False  # cumulatively acknowledged (gone from the scoreboard)


class Scoreboard:
    """Segments sent and not yet cumulatively acknowledged, in offset order.

    ``pipe`` is RFC 6675's estimate of octets in flight: sent, not SACKed, and not deemed
    lost (a retransmitted segment counts again until it is SACKed or acknowledged).
    """

    __slots__ = (
        "_head",
        "_lost_queue",
        "_sacked_runs",
        "_segs",
        "lost_bytes",
        "lost_total",
        "newly_sacked",
        "pipe",
        "reordered",
        "retransmitted",
        "sacked_bytes",
        "sacked_segments",
    )

    def __init__(self) -> None:
        self._segs: list[SentSegment] = []
        self._head = 0
        self.pipe = 0
        self.sacked_bytes = 0
        self.lost_bytes = 0
        self.lost_total = 0  # bytes ever deemed lost (a segment each time it is)
        self.reordered = 0  # segments deemed lost that arrived without a retransmission
        self.sacked_segments = 0
        # The two queues below exist only while they hold something: an empty deque costs
        # 768 bytes, and most connections of a busy server have nothing lost or resent
        # (bench/README.md, "Scale").
        self._lost_queue: deque[SentSegment] | None = None
        # Retransmissions in the order they were sent (RACK walks them by send time).
        self.retransmitted: deque[tuple[SentSegment, float]] | None = None
        self.newly_sacked: list[SentSegment] = []  # filled by apply_sack, drained by RACK
        # The SACKed segments as disjoint runs of offsets, [start0, end0, start1, end1, ...]
        # in order, each run starting and ending on segment boundaries.
        self._sacked_runs: list[int] = []

    def __len__(self) -> int:
        return len(self._segs) - self._head

    def __iter__(self) -> object:
        return iter(self._segs[self._head :])

    def first(self) -> SentSegment | None:
        return self._segs[self._head] if self._head < len(self._segs) else None

    def last(self) -> SentSegment | None:
        return self._segs[-1] if self._head < len(self._segs) else None

    def add(self, seg: SentSegment) -> None:
        self._segs.append(seg)
        self.pipe += seg.end - seg.start

    def _index(self, offset: int) -> int:
        """Index of the first segment whose start is >= offset."""
        return bisect_left(self._segs, offset, self._head, key=lambda s: s.start)

    def acknowledge(self, upto: int) -> list[SentSegment]:
        """Drop segments wholly below ``upto``; trim one straddling it. Returns those dropped."""
        segs, head = self._segs, self._head
        done: list[SentSegment] = []
        while head < len(segs) and segs[head].end <= upto:
            seg = segs[head]
            self._forget(seg, seg.end - seg.start)
            done.append(seg)
            head += 1
        if head < len(segs) and segs[head].start < upto:
            seg = segs[head]
            self._forget(seg, upto - seg.start)
            seg.start = upto
        self._head = head
        runs = self._sacked_runs
        if runs and runs[0] < upto:
            k = bisect_right(runs, upto)
            if k & 1:
                del runs[: k - 1]
                runs[0] = upto  # the run's first segment was trimmed to SND.UNA
            else:
                del runs[:k]
        if head > 64 and head * 2 > len(segs):
            del segs[:head]
            self._head = 0
        self._trim_retransmitted()
        return done

    def _forget(self, seg: SentSegment, n: int) -> None:
        """Remove ``n`` acknowledged bytes of ``seg`` from whichever tally holds them."""
        if seg.sacked:
            self.sacked_bytes -= n
        elif seg.lost:
            self.lost_bytes -= n
            if seg.retransmits == 0:
                self.reordered += 1
        else:
            self.pipe -= n
        if n == seg.end - seg.start:
            seg.lost = False  # wholly acknowledged: never to be retransmitted
            seg.acked = True
            if seg.sacked:
                self.sacked_segments -= 1

    def apply_sack(self, start: int, end: int) -> int:
        """Mark segments wholly inside [start, end) SACKed; return bytes newly SACKed.

        Only the parts of the block outside the runs SACKed before are walked (a block
        grows by a segment or two per ACK), so an ACK costs O(log n) plus what it newly
        covers, not the length of its blocks.
        """
        runs = self._sacked_runs
        newly = 0
        pos = start
        k = bisect_right(runs, start)
        if k & 1:  # start lies inside a run: go on from its end
            pos = runs[k]
            k += 1
        while pos < end:
            gap_end = min(runs[k], end) if k < len(runs) else end
            newly += self._sack_segments(pos, gap_end)
            if gap_end >= end:
                break
            pos = runs[k + 1]
            k += 2
        self._add_run(start, end)
        return newly

    def _add_run(self, start: int, end: int) -> None:
        """Record the segments wholly inside [start, end) as one SACKed run (merged with the
        runs it overlaps or touches)."""
        segs = self._segs
        i = self._index(start)
        j = bisect_right(segs, end, i, key=lambda s: s.end)
        if i >= j:
            return
        lo, hi = segs[i].start, segs[j - 1].end
        runs = self._sacked_runs
        p = bisect_left(runs, lo)
        q = bisect_right(runs, hi)
        if p & 1:
            p -= 1
            lo = runs[p]
        if q & 1:
            hi = runs[q]
            q += 1
        runs[p:q] = [lo, hi]

    def _sack_segments(self, start: int, end: int) -> int:
        segs = self._segs
        i = self._index(start)
        newly = 0
        while i < len(segs) and segs[i].end <= end:
            seg = segs[i]
            i += 1
            if seg.sacked:
                continue
            n = seg.end - seg.start
            if seg.lost:
                seg.lost = False
                self.lost_bytes -= n
                if seg.retransmits == 0:
                    self.reordered += 1
            else:
                self.pipe -= n
            seg.sacked = True
            self.sacked_segments += 1
            self.sacked_bytes += n
            newly += n
            self.newly_sacked.append(seg)
        return newly

    def mark_lost(self, seg: SentSegment) -> int:
        if seg.sacked or seg.lost:
            return 0
        n = seg.end - seg.start
        seg.lost = True
        self.pipe -= n
        self.lost_bytes += n
        self.lost_total += n
        if self._lost_queue is None:
            self._lost_queue = deque()
        self._lost_queue.append(seg)
        return n

    def mark_all_lost(self) -> None:
        """The retransmission timer expired: everything not cumulatively acknowledged is to
        be sent again, from SND.UNA on.

        RFC 2018 8: the receiver may have reneged (dropped data it SACKed), and a timeout
        is the sign that it did, so the SACKed marks are turned off too and SACKed segments
        are resent like the others (as Linux does). SACK blocks arriving after the timeout
        mark again what the receiver still holds, so those are not resent twice.
        """
        queue: deque[SentSegment] = deque()
        self._lost_queue = queue
        self._sacked_runs.clear()
        for seg in self._segs[self._head :]:
            if seg.sacked:
                n = seg.end - seg.start
                seg.sacked = False
                self.sacked_segments -= 1
                self.sacked_bytes -= n
                seg.lost = True
                self.lost_bytes += n
                self.lost_total += n
                queue.append(seg)
            elif seg.lost:
                queue.append(seg)
            else:
                self.mark_lost(seg)

    def next_lost(self) -> SentSegment | None:
        """The lowest segment still marked lost, or None."""
        q = self._lost_queue
        while q and not q[0].lost:
            q.popleft()
        if q:
            return q[0]
        self._lost_queue = None
        return None

    def on_retransmit(self, seg: SentSegment, now: float) -> None:
        n = seg.end - seg.start
        if seg.lost:
            seg.lost = False
            self.lost_bytes -= n
            self.pipe += n
        seg.retransmits += 1
        seg.xmit_time = now
        if self.retransmitted is None:
            self.retransmitted = deque()
        self.retransmitted.append((seg, now))
        self._trim_retransmitted()

    def _trim_retransmitted(self) -> None:
        """Keep the log of retransmissions bounded by the segments in flight.

        An entry is dead once its segment is acknowledged or sent again (a newer entry
        stands for it). RACK skips dead entries as it walks; without SACK nothing walks,
        so they go here: from the front as ACKs arrive, and all at once when they make up
        more than half the log (amortised O(1): the log is then at most twice the
        segments in flight, and at most their number right after).
        """
        q = self.retransmitted
        if q is None:
            return
        while q and (q[0][0].acked or q[0][0].xmit_time != q[0][1]):
            q.popleft()
        if not q:
            self.retransmitted = None
            return
        if len(q) > 2 * len(self):
            live = [(seg, when) for seg, when in q if not seg.acked and seg.xmit_time == when]
            q.clear()
            q.extend(live)

    def unmark_lost(self) -> None:
        """A spurious timeout (RFC 4015 2): segments marked lost and not yet sent again
        count as in flight once more, so the sender goes on with new data."""
        for seg in self._lost_queue or ():
            if seg.lost:
                n = seg.end - seg.start
                seg.lost = False
                self.lost_bytes -= n
                self.pipe += n
        self._lost_queue = None

    def segments_from(self, offset: int) -> Iterator[SentSegment]:
        """Segments in offset order, starting with the first whose start is >= offset."""
        segs = self._segs
        for i in range(self._index(offset), len(segs)):
            yield segs[i]

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]


class Prr:
    """Proportional rate reduction (RFC 9937 4): how much may be sent during recovery."""

    __slots__ = ("delivered", "out", "quota", "recover_fs")

    def __init__(self, recover_fs: int) -> None:
        self.recover_fs = max(recover_fs, 1)  # RFC 9937: RecoverFS = pipe at the start
        self.delivered = 0  # prr_delivered
        self.out = 0  # prr_out
        self.quota = 0  # sndcnt left for this ACK

    def on_ack(self, delivered: int, *, pipe: int, ssthresh: int, mss: int, safe: bool) -> None:
        """RFC 9937 4, on every ACK during recovery that delivered data (DeliveredData).

        ``safe``: RFC 9937's safeACK, an ACK that advances SND.UNA and indicates no further
        loss; only then may the sender go one segment beyond what was delivered (PRR-SSRB).
        """
        self.delivered += delivered
        if pipe > ssthresh:
            # Proportional part: sndcnt = CEIL(prr_delivered * ssthresh / RecoverFS) - prr_out.
            sndcnt = -(-self.delivered * ssthresh // self.recover_fs) - self.out
        else:
            # PRR-CRB by default: send what was delivered, catching up on what is owed.
            sndcnt = max(self.delivered - self.out, delivered)
            if safe:
                sndcnt += mss  # PRR-SSRB: recovery is making good progress
            sndcnt = min(ssthresh - pipe, sndcnt)
        if self.out == 0 and sndcnt <= 0:
            sndcnt = mss  # RFC 9937 4: the fast retransmit itself always goes out
        self.quota = max(sndcnt, 0)

    def on_sent(self, n: int) -> None:
        self.out += n
        self.quota -= n
