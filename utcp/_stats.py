"""Per-connection counters (the raw material of ``statistics()``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ConnectionStats:
    segments_sent: int = 0
    segments_received: int = 0
    bytes_sent: int = 0  # new payload bytes, first transmissions only
    bytes_retransmitted: int = 0
    bytes_acked: int = 0
    bytes_received: int = 0  # in-order payload bytes delivered to the receive buffer
    retransmits: int = 0
    fast_retransmits: int = 0
    rto_expiries: int = 0
    lost_segments: int = 0
    sacked_bytes: int = 0
    dup_segments_received: int = 0
    ooo_segments_received: int = 0
    window_probes: int = 0
    zero_windows_advertised: int = 0
    keepalive_probes: int = 0
    tlp_probes: int = 0  # RFC 8985 7 tail loss probes sent
    tlp_recoveries: int = 0  # probes that repaired a loss (answered by a window reduction)
    dsacks_sent: int = 0
    dsacks_received: int = 0
    spurious_retransmits: int = 0  # retransmissions a D-SACK proved unnecessary
    undos: int = 0  # congestion responses undone as spurious
    challenge_acks_sent: int = 0
    resets_sent: int = 0
    kernel_errors: int = 0  # ICMP errors and failed sends that concerned this connection
    emsgsize_errors: int = 0  # of which: segments too big to send (EMSGSIZE)
    drops: dict[str, int] = field(default_factory=dict)
