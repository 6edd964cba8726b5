"""A handshake whose final ACK was lost, completed by the peer's keep-alive (issue 15).

The amplification bound (docs/HARDENING.md) keeps a passive connection in SYN-RECEIVED from
resending its SYN-ACK unasked, so when the peer's final ACK is lost and the peer, now
ESTABLISHED, waits for us to speak first, the only segments it sends are keep-alives:
SEG.SEQ = SND.NXT - 1 and no data (RFC 9293 3.8.4), one below our window. RFC 9293
3.10.7.4 would answer each with an ACK and drop it until our handshake times out and the
next probe draws a RST. We depart from that: such a probe acknowledges our SYN as well as the
lost ACK would have, so its ACK is processed. Its timestamp echo (or our SYN-ACK's send time)
is as old as the loss, so it gives no RTT sample (RFC 6298 3: a sample must time one
transmission and its own acknowledgment).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._wire import ACK, Segment

if TYPE_CHECKING:
    from ._connection import Connection


def late_final_ack(conn: Connection, seg: Segment) -> bool:
    """Whether ``seg``, at offset 0 of a connection in SYN-RECEIVED, is a keep-alive to take
    for its ACK; if so its RTT sources are cleared."""
    if seg.flags != ACK or seg.payload:
        return False
    conn._syn_time = None
    if seg.timestamps is not None:
        seg.timestamps = (seg.timestamps[0], 0)
    return True
