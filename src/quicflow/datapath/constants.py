"""Linux socket constants that Python 3.11's :mod:`socket` module does not export.

Values are from the Linux UAPI headers (``linux/udp.h``, ``linux/in.h``,
``linux/in6.h``, ``asm-generic/socket.h``); they are stable ABI.
"""

from __future__ import annotations

import socket
from typing import Final

SOL_UDP: Final = 17
UDP_SEGMENT: Final = 103
UDP_GRO: Final = 104

IPPROTO_IP: Final = socket.IPPROTO_IP
IPPROTO_IPV6: Final = socket.IPPROTO_IPV6
IP_TOS: Final = 1
IP_PKTINFO: Final = 8
IP_MTU_DISCOVER: Final = 10
IP_RECVERR: Final = 11
IP_RECVTOS: Final = 13
IP_MTU: Final = 14
#: IP_MTU_DISCOVER / IPV6_MTU_DISCOVER value: always set DF, never fragment locally; a
#: datagram larger than the (path) MTU is refused with EMSGSIZE.
IP_PMTUDISC_DO: Final = 2
IPV6_PMTUDISC_DO: Final = 2
IPV6_MTU_DISCOVER: Final = 23
IPV6_MTU: Final = 24
IPV6_RECVERR: Final = 25
IPV6_V6ONLY: Final = 26
IPV6_RECVTCLASS: Final = 66
IPV6_TCLASS: Final = 67

SO_REUSEPORT: Final = 15
SO_SNDBUFFORCE: Final = 32
SO_RCVBUFFORCE: Final = 33
SO_ATTACH_REUSEPORT_CBPF: Final = 51
#: ``getsockopt`` of the socket's memory counters (``SK_MEMINFO_*``, u32 each); the
#: ninth, ``SK_MEMINFO_DROPS``, counts what the kernel dropped for it (Linux >= 4.x)
SO_MEMINFO: Final = 55
SK_MEMINFO_VARS: Final = 9
SK_MEMINFO_DROPS: Final = 8

#: a plain int: ``socket.MSG_TRUNC`` is a ``MsgFlag``, and ``flags & MsgFlag`` runs the
#: enum module's Python ``__and__`` on every datagram received
MSG_TRUNC: Final = int(socket.MSG_TRUNC)
MSG_ERRQUEUE: Final = 0x2000

#: ``struct sock_extended_err.ee_origin`` values (linux/errqueue.h).
SO_EE_ORIGIN_LOCAL: Final = 1
SO_EE_ORIGIN_ICMP: Final = 2
SO_EE_ORIGIN_ICMP6: Final = 3

#: Largest UDP payload the receive path must hold in one slot (a GRO buffer).
MAX_UDP_PAYLOAD: Final = 65535
#: Receive slot size: one full GRO buffer never truncates.
RECV_SLOT_BYTES: Final = 65536
#: Largest UDP payload of one IPv4 datagram (65535 - 20 IP - 8 UDP).
MAX_GSO_BYTES_V4: Final = 65507
#: Largest UDP payload of one IPv6 datagram (65535 - 8 UDP; the IPv6 header is not counted).
MAX_GSO_BYTES_V6: Final = 65527
#: Segments per GSO call that every kernel with UDP_SEGMENT accepts (UDP_MAX_SEGMENTS was
#: 64 before Linux 5.x raised it to 128).
MAX_GSO_SEGMENTS: Final = 64

#: ECN codepoints (the low two bits of the TOS / traffic class byte).
ECN_NOT_ECT: Final = 0
ECN_ECT1: Final = 1
ECN_ECT0: Final = 2
ECN_CE: Final = 3
ECN_MASK: Final = 3

BACKENDS: Final = ("auto", "gso", "mmsg", "basic")
