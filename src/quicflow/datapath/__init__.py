"""Real UDP sockets: batch send/receive backends (GSO/GRO or per datagram), capability
probing, per-connection sockets. Protocol-agnostic: moves bytes, knows nothing of QUIC."""

from quicflow.datapath.backends import MMSG_REFUSED, DatapathCounters, RecvEntry
from quicflow.datapath.probe import Capabilities, probe_capabilities
from quicflow.datapath.socket import UdpTransport, normalize_address, to_socket_address

__all__ = [
    "Capabilities",
    "DatapathCounters",
    "MMSG_REFUSED",
    "RecvEntry",
    "UdpTransport",
    "normalize_address",
    "probe_capabilities",
    "to_socket_address",
]
