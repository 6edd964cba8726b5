"""Testing kit for utcp: simulated network, fault injection, pcap, core pairs, stream makers.

Nothing in `utcp` imports this package.
"""

from __future__ import annotations

from utcp.testing._dropin import SimBinder, sim_socket_factory
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
from utcp.testing._streams import CLOGGED, sim_stream_pair, udp_stream_pair
from utcp.testing._trio_net import SimTransport, TrioNetwork

__all__ = [
    "CLIENT_ADDR",
    "CLOGGED",
    "SERVER_ADDR",
    "Address",
    "GilbertElliott",
    "HostPair",
    "LinkConfig",
    "LinkStats",
    "Node",
    "PcapSink",
    "Side",
    "SimBinder",
    "SimNetwork",
    "SimTransport",
    "SimulationTimeout",
    "TraceRecord",
    "TransferResult",
    "TrioNetwork",
    "random_payload",
    "sim_socket_factory",
    "sim_stream_pair",
    "udp_stream_pair",
]
