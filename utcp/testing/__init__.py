"""Testing kit for utcp: simulated network, fault injection, pcap, core pairs, stream makers.

Nothing in `utcp` imports this package.
"""

from __future__ import annotations

from utcp.testing._network import (
    Address,
    GilbertElliott,
    LinkConfig,
    LinkStats,
    Node,
    PcapSink,
    SimNetwork,
    SimulationTimeout,
    TraceRecord,
)
from utcp.testing._pair import (
    CLIENT_ADDR,
    SERVER_ADDR,
    HostPair,
    Side,
    TransferResult,
    random_payload,
)

__all__ = [
    "CLIENT_ADDR",
    "SERVER_ADDR",
    "Address",
    "GilbertElliott",
    "HostPair",
    "LinkConfig",
    "LinkStats",
    "Node",
    "PcapSink",
    "Side",
    "SimNetwork",
    "SimulationTimeout",
    "TraceRecord",
    "TransferResult",
    "random_payload",
]
