"""HyStart++ (RFC 9406): leave the initial slow start on a rise in round-trip delay.

Rounds are counted on sequence offsets (RFC 9406 4.2): ``window_end`` is SND.NXT when a
round starts, and the round ends when SND.UNA reaches it. In each round the minimum RTT is
tracked; once a round has ``N_RTT_SAMPLE`` samples and its minimum exceeds the previous
round's by ``RttThresh`` (an eighth of it, clamped to 4..16 ms), slow start gives way to
Conservative Slow Start (CSS), which grows a quarter as fast. If the minimum RTT falls back
below the CSS baseline the exit was spurious and slow start resumes; after ``CSS_ROUNDS``
rounds in CSS the caller enters congestion avoidance with ssthresh = cwnd. The round in
which CSS begins counts as its first round.
"""

from __future__ import annotations

import math

# RFC 9406 4.3: recommended constants.
MIN_RTT_THRESH = 0.004
MAX_RTT_THRESH = 0.016
MIN_RTT_DIVISOR = 8
N_RTT_SAMPLE = 8
CSS_GROWTH_DIVISOR = 4
CSS_ROUNDS = 5
# RFC 9406 4.3: L = 8 segments for a sender that does not pace (utcp does not).
NON_PACED_L = 8


def rtt_thresh(last_round_min_rtt: float) -> float:
    # RFC 9406 4.2: RttThresh = max(MIN_RTT_THRESH, min(lastRoundMinRTT / MIN_RTT_DIVISOR,
    # MAX_RTT_THRESH)).
    return max(MIN_RTT_THRESH, min(last_round_min_rtt / MIN_RTT_DIVISOR, MAX_RTT_THRESH))


class HyStart:
    """The HyStart++ state of one slow start; the controller owns cwnd and ssthresh."""

    __slots__ = (
        "css_baseline_min_rtt",
        "css_rounds",
        "current_round_min_rtt",
        "last_round_min_rtt",
        "limit",
        "rtt_sample_count",
        "window_end",
    )

    def __init__(self, *, limit: int | None = NON_PACED_L) -> None:
        self.limit = limit  # L in segments; None is RFC 9406's infinity (paced senders)
        self.window_end: int | None = None
        self.last_round_min_rtt = math.inf
        self.current_round_min_rtt = math.inf
        self.rtt_sample_count = 0
        self.css_baseline_min_rtt = math.inf
        self.css_rounds = 0

    @property
    def in_css(self) -> bool:
        return self.css_baseline_min_rtt != math.inf

    def on_sent(self, *, snd_nxt: int) -> None:
        # RFC 9406 4.2: windowEnd starts at SND.NXT.
        if self.window_end is None:
            self.window_end = snd_nxt

    def on_ack(
        self, *, acked: int, rtt: float | None, snd_una: int, snd_nxt: int, mss: int
    ) -> int | None:
        """The cwnd increase for this ACK in bytes, or None: CSS is over, enter avoidance."""
        if self.window_end is None or snd_una >= self.window_end:
            if self.window_end is not None and self.in_css:
                self.css_rounds += 1
                if self.css_rounds >= CSS_ROUNDS:
                    # RFC 9406 4.2: "If CSS_ROUNDS rounds are complete, enter congestion
                    # avoidance by setting the ssthresh to the current cwnd".
                    return None
            # RFC 9406 4.2: when windowEnd is ACKed a round ends; start the next one.
            self.window_end = snd_nxt
            self.last_round_min_rtt = self.current_round_min_rtt
            self.current_round_min_rtt = math.inf
            self.rtt_sample_count = 0
        # RFC 9406 4.2: cwnd += min(N, L*SMSS) in slow start, that over CSS_GROWTH_DIVISOR
        # in CSS.
        increase = acked if self.limit is None else min(acked, self.limit * mss)
        if self.in_css:
            increase //= CSS_GROWTH_DIVISOR
        if rtt is not None:
            # RFC 9406 4.2: currentRoundMinRTT = min(currentRoundMinRTT, currRTT).
            self.current_round_min_rtt = min(self.current_round_min_rtt, rtt)
            self.rtt_sample_count += 1
        if self.rtt_sample_count >= N_RTT_SAMPLE:
            if not self.in_css:
                # RFC 9406 4.2: a delay increase of RttThresh ends slow start; enter CSS.
                last = self.last_round_min_rtt
                current = self.current_round_min_rtt
                if last != math.inf and current >= last + rtt_thresh(last):
                    self.css_baseline_min_rtt = current
                    self.css_rounds = 0
            elif self.current_round_min_rtt < self.css_baseline_min_rtt:
                # RFC 9406 4.2: the exit was spurious; resume slow start with HyStart++.
                self.css_baseline_min_rtt = math.inf
        return increase
