"""Micro-benchmark of the UDP datapath primitives on loopback (Python, 1200-byte payloads).

Run: .venv/bin/python bench/datapath_micro.py [--seconds 1.0]

Prints datagrams/s for each send method (sendto, GSO sendmsg, ctypes sendmmsg) and each
receive method (recvfrom, recvmsg 64 KiB, recvmsg_into, ctypes recvmmsg, GRO recvmsg).
Send figures count datagrams handed to the kernel (a drained receiver runs in no other
thread: loopback delivery is synchronous and overflow is dropped by the receiver socket,
which does not slow the sender). Receive figures fill the receiver's buffer first, then
time the reads.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import socket
import struct
import time
from collections.abc import Callable

PAYLOAD = 1200
SEGS = 40  # 48 000 bytes per GSO call
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
MSG_DONTWAIT = 0x40


class Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", Msghdr), ("msg_len", ctypes.c_uint)]


LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
LIBC.sendmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(Mmsghdr), ctypes.c_uint, ctypes.c_int]
LIBC.recvmmsg.argtypes = [
    ctypes.c_int, ctypes.POINTER(Mmsghdr), ctypes.c_uint, ctypes.c_int, ctypes.c_void_p
]


def sockaddr_in(addr: tuple[str, int]) -> ctypes.Array[ctypes.c_char]:
    raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", addr[1])
    raw += socket.inet_aton(addr[0]) + bytes(8)
    return ctypes.create_string_buffer(raw, len(raw))


def pair(gro: bool = False) -> tuple[socket.socket, socket.socket]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
    if gro:
        rx.setsockopt(SOL_UDP, UDP_GRO, 1)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, 32, 64 << 20)  # SO_SNDBUFFORCE
    tx.bind(("127.0.0.1", 0))
    tx.connect(rx.getsockname())
    return rx, tx


def drain(rx: socket.socket) -> None:
    try:
        while True:
            rx.recv(65536)
    except BlockingIOError:
        pass


def rate(fn: Callable[[], int], seconds: float) -> float:
    fn()
    count = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        count += fn()
    return count / (time.perf_counter() - start)


def bench_send(seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}
    rx, tx = pair()
    dgram = bytes(PAYLOAD)
    send = tx.send

    def sendto_loop() -> int:
        for _ in range(SEGS):
            send(dgram)
        return SEGS

    out["send (connected, per datagram)"] = rate(sendto_loop, seconds)
    drain(rx)
    addr = rx.getsockname()
    tx2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sendto = tx2.sendto

    def sendto_unconnected() -> int:
        for _ in range(SEGS):
            sendto(dgram, addr)
        return SEGS

    out["sendto (unconnected, per datagram)"] = rate(sendto_unconnected, seconds)
    drain(rx)
    big = bytes(PAYLOAD * SEGS)
    cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", PAYLOAD))]
    sendmsg = tx.sendmsg

    def gso() -> int:
        sendmsg([big], cmsg)
        return SEGS

    out[f"sendmsg UDP_SEGMENT ({SEGS} x {PAYLOAD}), plain rx"] = rate(gso, seconds)
    drain(rx)
    rx_gro, tx_gro = pair(gro=True)
    sendmsg_gro = tx_gro.sendmsg

    def gso_to_gro() -> int:
        sendmsg_gro([big], cmsg)
        return SEGS

    out[f"sendmsg UDP_SEGMENT ({SEGS} x {PAYLOAD}), GRO rx"] = rate(gso_to_gro, seconds)
    rx_gro.close()
    tx_gro.close()

    # ctypes sendmmsg: vector of SEGS datagrams, prebuilt once (best case for ctypes).
    buf = ctypes.create_string_buffer(big, len(big))
    iovs = (Iovec * SEGS)()
    msgs = (Mmsghdr * SEGS)()
    base = ctypes.addressof(buf)
    for i in range(SEGS):
        iovs[i].iov_base = base + i * PAYLOAD
        iovs[i].iov_len = PAYLOAD
        msgs[i].msg_hdr.msg_iov = ctypes.pointer(iovs[i])
        msgs[i].msg_hdr.msg_iovlen = 1
    fd = tx.fileno()
    sendmmsg = LIBC.sendmmsg

    def mmsg_prebuilt() -> int:
        return int(sendmmsg(fd, msgs, SEGS, 0))

    out[f"ctypes sendmmsg ({SEGS} prebuilt)"] = rate(mmsg_prebuilt, seconds)
    drain(rx)

    # Realistic ctypes sendmmsg: the batch changes each call, so copy data and set lengths.
    def mmsg_fill() -> int:
        ctypes.memmove(buf, big, len(big))
        for i in range(SEGS):
            iovs[i].iov_len = PAYLOAD
        return int(sendmmsg(fd, msgs, SEGS, 0))

    out[f"ctypes sendmmsg ({SEGS}, refilled per call)"] = rate(mmsg_fill, seconds)
    drain(rx)
    rx.close()
    tx.close()
    tx2.close()
    return out


def fill(tx: socket.socket, n: int, gso: bool) -> None:
    if gso:
        big = bytes(PAYLOAD * SEGS)
        cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", PAYLOAD))]
        for _ in range(n // SEGS):
            tx.sendmsg([big], cmsg)
    else:
        d = bytes(PAYLOAD)
        for _ in range(n):
            tx.send(d)


def recv_rate(name: str, reader: Callable[[socket.socket], int], gro: bool,
              gso: bool, rounds: int) -> tuple[str, float]:
    total = 0
    elapsed = 0.0
    for _ in range(rounds):
        rx, tx = pair(gro)
        fill(tx, 20000, gso)
        start = time.perf_counter()
        total += reader(rx)
        elapsed += time.perf_counter() - start
        rx.close()
        tx.close()
    return name, total / elapsed


def read_recvfrom(rx: socket.socket) -> int:
    n = 0
    recvfrom = rx.recvfrom
    try:
        while True:
            recvfrom(65536)
            n += 1
    except BlockingIOError:
        return n


def read_recvmsg(rx: socket.socket) -> int:
    n = 0
    recvmsg = rx.recvmsg
    anc = socket.CMSG_SPACE(4) * 2
    try:
        while True:
            data, _, _, _ = recvmsg(65536, anc)
            n += 1
    except BlockingIOError:
        return n


def read_recvmsg_into(rx: socket.socket) -> int:
    n = 0
    buf = bytearray(65536)
    bufs = [buf]
    recvmsg_into = rx.recvmsg_into
    anc = socket.CMSG_SPACE(4) * 2
    try:
        while True:
            nbytes, _, _, _ = recvmsg_into(bufs, anc)
            bytes(buf[:nbytes])
            n += 1
    except BlockingIOError:
        return n


def read_gro(rx: socket.socket) -> int:
    n = 0
    recvmsg = rx.recvmsg
    anc = socket.CMSG_SPACE(4) * 2
    try:
        while True:
            data, ancdata, _, _ = recvmsg(65536, anc)
            seg = len(data)
            for level, kind, cdata in ancdata:
                if level == SOL_UDP and kind == UDP_GRO:
                    seg = int.from_bytes(cdata, "little")
            n += -(-len(data) // seg)
    except BlockingIOError:
        return n


def read_recvmmsg(rx: socket.socket) -> int:
    vlen = 64
    slot = 2048  # generous for 1200-byte datagrams (a GRO-safe slot would be 64 KiB)
    buf = ctypes.create_string_buffer(vlen * slot)
    iovs = (Iovec * vlen)()
    msgs = (Mmsghdr * vlen)()
    names = ctypes.create_string_buffer(vlen * 16)
    base = ctypes.addressof(buf)
    for i in range(vlen):
        iovs[i].iov_base = base + i * slot
        iovs[i].iov_len = slot
        msgs[i].msg_hdr.msg_iov = ctypes.pointer(iovs[i])
        msgs[i].msg_hdr.msg_iovlen = 1
        msgs[i].msg_hdr.msg_name = ctypes.addressof(names) + 16 * i
    fd = rx.fileno()
    recvmmsg = LIBC.recvmmsg
    n = 0
    view = memoryview(buf)
    nview = memoryview(names)
    while True:
        for i in range(vlen):
            msgs[i].msg_hdr.msg_namelen = 16
        got = recvmmsg(fd, msgs, vlen, MSG_DONTWAIT, None)
        if got <= 0:
            return n
        for i in range(got):  # what a caller needs: data and address of each datagram
            length = msgs[i].msg_len
            bytes(view[i * slot:i * slot + length])
            raw = nview[16 * i:16 * i + 8]
            (socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big"))
        n += got


def bench_transport(seconds: float) -> dict[str, float]:
    """quicflow.datapath.UdpTransport end to end (send_batch then recv_batch, one thread)."""
    from quicflow.datapath import UdpTransport

    out: dict[str, float] = {}
    for backend in ("gso", "basic"):
        rx = UdpTransport.open("127.0.0.1", 0, backend=backend, buffer_bytes=32 << 20)
        tx = UdpTransport.open("127.0.0.1", 0, backend=backend, connect_to=rx.local_address)
        batch = bytearray(PAYLOAD * SEGS)

        def round_trip(
            tx: UdpTransport = tx, rx: UdpTransport = rx, batch: bytearray = batch
        ) -> int:
            tx.send_batch(batch, PAYLOAD, None)
            n = 0
            for data, seg, _, _ in rx.recv_batch(SEGS):
                n += -(-len(data) // seg)
            return n

        out[f"UdpTransport {backend}: send_batch + recv_batch"] = rate(round_trip, seconds)
        rx.close()
        tx.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"payload {PAYLOAD} B, loopback IPv4, {time.strftime('%Y-%m-%d')}")
    print("send (datagrams/s):")
    for name, value in bench_send(args.seconds).items():
        print(f"  {name:45s} {value / 1e6:7.3f} M")
    print("quicflow.datapath (datagrams/s delivered, sender and receiver in one thread):")
    for name, value in bench_transport(args.seconds).items():
        print(f"  {name:45s} {value / 1e6:7.3f} M")
    print("receive (datagrams/s, reader only):")
    for name, reader, gro, gso in (
        ("recvfrom 64 KiB", read_recvfrom, False, False),
        ("recvmsg 64 KiB + cmsg space", read_recvmsg, False, False),
        ("recvmsg_into 64 KiB + copy out", read_recvmsg_into, False, False),
        ("ctypes recvmmsg (64 x 2 KiB) + copy out", read_recvmmsg, False, False),
        ("GRO recvmsg 64 KiB (segments)", read_gro, True, True),
    ):
        label, value = recv_rate(name, reader, gro, gso, args.rounds)
        print(f"  {label:45s} {value / 1e6:7.3f} M")


if __name__ == "__main__":
    main()
