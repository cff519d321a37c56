"""Probe what the running kernel offers for batched UDP I/O.

Every probe uses sockets of its own on the loopback address of the family and real
syscalls, so a kernel (or a seccomp filter, or a container) that refuses a feature is
found out at start, not on the first send.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import select
import socket
import struct
from dataclasses import dataclass

from quicflow.datapath.constants import (
    ECN_ECT0,
    ECN_MASK,
    IP_RECVTOS,
    IP_TOS,
    IPPROTO_IP,
    IPPROTO_IPV6,
    IPV6_RECVTCLASS,
    IPV6_TCLASS,
    MAX_GSO_SEGMENTS,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
)

__all__ = ["Capabilities", "probe_capabilities", "loopback_host"]


@dataclass(slots=True)
class Capabilities:
    """What the kernel accepted for one address family."""

    gso: bool
    gro: bool
    mmsg: bool
    ecn: bool
    max_segments: int


def loopback_host(family: int) -> str:
    """The loopback address literal of ``family``."""
    return "::1" if family == socket.AF_INET6 else "127.0.0.1"


def _pair(family: int) -> tuple[socket.socket, socket.socket]:
    host = loopback_host(family)
    rx = socket.socket(family, socket.SOCK_DGRAM)
    tx = socket.socket(family, socket.SOCK_DGRAM)
    try:
        rx.bind((host, 0))
        tx.bind((host, 0))
    except OSError:
        rx.close()
        tx.close()
        raise
    return rx, tx


def _wait_readable(sock: socket.socket, timeout: float = 0.5) -> bool:
    readable, _, _ = select.select([sock], [], [], timeout)
    return bool(readable)


def _probe_gro(family: int) -> bool:
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.setsockopt(SOL_UDP, UDP_GRO, 1)
        except OSError:
            return False
        return True


def _probe_gso(family: int) -> bool:
    """A two-segment GSO send to a loopback socket of our own must arrive intact."""
    try:
        rx, tx = _pair(family)
    except OSError:
        return False
    with rx, tx:
        payload = bytes(range(100)) * 2
        try:
            tx.sendmsg(
                [payload], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", 100))], 0, rx.getsockname()
            )
        except OSError:
            return False
        got = b""
        while len(got) < len(payload) and _wait_readable(rx):
            got += rx.recv(65536)
        return got == payload


def _probe_ecn(family: int) -> bool:
    """Send with ECT(0) and read the TOS / traffic class back from a cmsg."""
    try:
        rx, tx = _pair(family)
    except OSError:
        return False
    with rx, tx:
        try:
            if family == socket.AF_INET6:
                rx.setsockopt(IPPROTO_IPV6, IPV6_RECVTCLASS, 1)
                tx.setsockopt(IPPROTO_IPV6, IPV6_TCLASS, ECN_ECT0)
            else:
                rx.setsockopt(IPPROTO_IP, IP_RECVTOS, 1)
                tx.setsockopt(IPPROTO_IP, IP_TOS, ECN_ECT0)
            tx.sendto(b"ecn", rx.getsockname())
            if not _wait_readable(rx):
                return False
            _, ancdata, _, _ = rx.recvmsg(64, socket.CMSG_SPACE(4))
        except OSError:
            return False
        for level, kind, cdata in ancdata:
            if (level, kind) in ((IPPROTO_IP, IP_TOS), (IPPROTO_IPV6, IPV6_TCLASS)) and cdata:
                value = cdata[0] if len(cdata) == 1 else int.from_bytes(cdata[:4], "little")
                return value & ECN_MASK == ECN_ECT0
        return False


def _probe_mmsg() -> bool:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return False
    return hasattr(libc, "sendmmsg") and hasattr(libc, "recvmmsg")


def probe_capabilities(family: int = socket.AF_INET) -> Capabilities:
    """Probe GSO, GRO, sendmmsg/recvmmsg and ECN for ``family`` (cached per family; each
    call returns a fresh copy).

    ``mmsg`` tells whether libc has the calls; quicflow does not use them (see
    ``quicflow.datapath.backends``): measured here, they are slower from Python than
    plain calls.
    """
    return dataclasses.replace(_probe_cached(family))


@functools.cache
def _probe_cached(family: int) -> Capabilities:
    gso = _probe_gso(family)
    return Capabilities(
        gso=gso,
        gro=_probe_gro(family),
        mmsg=_probe_mmsg(),
        ecn=_probe_ecn(family),
        max_segments=MAX_GSO_SEGMENTS if gso else 1,
    )
