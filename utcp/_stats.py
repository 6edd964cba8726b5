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
    # RFC 7413 Fast Open. Server: cookies put in SYN-ACKs, SYNs whose cookie was valid (their
    # data taken) or invalid. Client: SYNs that carried data, and those whose data the
    # SYN-ACK acknowledged; fallbacks: Fast Open SYNs lost, or answered without taking the
    # data or giving the cookie (each a negative response, RFC 7413 4.1.3.1).
    fastopen_cookies_sent: int = 0
    fastopen_accepted: int = 0
    fastopen_rejected: int = 0
    fastopen_syn_data_sent: int = 0
    fastopen_syn_data_acked: int = 0
    fastopen_fallbacks: int = 0
    drops: dict[str, int] = field(default_factory=dict)
