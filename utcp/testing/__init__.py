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

__all__ = [
    "Address",
    "GilbertElliott",
    "LinkConfig",
    "LinkStats",
    "Node",
    "PcapSink",
    "SimNetwork",
    "SimulationTimeout",
    "TraceRecord",
]
