"""Reuseport groups and their classic-BPF steering program.

N UDP sockets bound to one address and port with SO_REUSEPORT form a group: the kernel
gives each datagram to one member. Without a program it hashes the 4-tuple; with a
classic BPF program attached (``SO_ATTACH_REUSEPORT_CBPF``) the program's return value is
the member's index, and an index >= the number of members makes the kernel fall back to
the 4-tuple hash (``tests/test_reuseport.py`` measures both on this kernel). The program
returns that fallback index itself for anything it does not steer: a group can hold more
members than workers (connected per-connection sockets bound after the listeners), and
an index below the member count would select one of them.

The steering program reads the UDP payload (offset 0 is the QUIC first byte):

- a short header (first bit 0): the worker byte of the DCID, the last byte of the
  QUIC-LB server ID, at payload offset ``1 + worker_cid_offset``; a CID whose config id
  (its first three bits) is not ours, or whose worker byte names no worker, falls back
  to the hash;
- a long header whose DCID (length at payload offset 5, the CID from offset 6) has our
  CID length, when the program is given it: the same worker byte, so Handshake packets
  and the client's later Initials follow the CID even after its address changed;
- with our CID length given, any other long header (a client's first Initials and 0-RTT,
  whose DCID it chose at random, RFC 9000 §7.2): worker ``DCID[0] mod N``. Every copy of
  a client's first Initial carries the same DCID, so a resent Initial reaches the worker
  that holds its connection, from any client address. The kernel's fallback hash does
  not promise that: it picks anew for a client whose address changed during the
  handshake, and it counts every unconnected member, including a per-connection socket
  between its ``bind`` and its ``connect`` (measured in tests/test_reuseport.py: with
  three such sockets, most sources move and some land on those sockets). Another
  worker would then make a second connection for the same client;
- without our CID length, every long header: an index >= N, so the 4-tuple hash picks
  the worker, which then issues CIDs carrying its own worker byte.

Index ↔ member: the kernel numbers members in the order they joined, and closing member
i moves the *last* member into slot i. ``ReuseportGroup`` binds every member at once and
keeps all of them open for the life of the group (a worker process that dies does not
close its socket, since the group's owner holds it too; the restarted worker inherits
the same socket), so slot i is worker i until :meth:`ReuseportGroup.close`. For groups
whose order does change, :func:`steering_program` takes an explicit worker -> slot map
and :meth:`ReuseportGroup.steer` re-attaches it.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Sequence

from .constants import SO_REUSEPORT
from .socket import UdpTransport, _set_buffers, bind_reuseport

__all__ = [
    "SO_ATTACH_REUSEPORT_CBPF",
    "SO_DETACH_REUSEPORT_BPF",
    "FALLBACK_INDEX",
    "steering_program",
    "attach_program",
    "detach_program",
    "ReuseportGroup",
]

#: Linux socket options (asm-generic/socket.h); Python 3.11's socket module lacks them.
SO_ATTACH_REUSEPORT_CBPF = 51
SO_DETACH_REUSEPORT_BPF = 68

#: What the program returns for "no opinion": >= any group size, so the kernel hashes.
FALLBACK_INDEX = 0xFFFFFFFF

# Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
_LDB_ABS = 0x00 | 0x10 | 0x20  # BPF_LD | BPF_B | BPF_ABS: A = payload[k]
_ALU_AND_K = 0x04 | 0x50 | 0x00  # BPF_ALU | BPF_AND | BPF_K: A &= k
_JEQ_K = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
_JSET_K = 0x05 | 0x40 | 0x00  # BPF_JMP | BPF_JSET | BPF_K
_JGE_K = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
_ALU_MOD_K = 0x04 | 0x90 | 0x00  # BPF_ALU | BPF_MOD | BPF_K: A %= k
_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K
_RET_A = 0x06 | 0x10  # BPF_RET | BPF_A

Instruction = tuple[int, int, int, int]  # (code, jt, jf, k) = struct sock_filter
_MAX_JUMP = 255
#: Socket buffers of each member (as UdpTransport.open).
BUFFER_BYTES = 8 << 20


def _cid_block(
    base: int, worker_cid_offset: int, workers: int, config_id: int | None,
    slot_of: Sequence[int] | None,
) -> list[Instruction]:
    """Steer by the CID that starts at payload offset ``base``; every "no" ends in the
    block's own last instruction, ``ret FALLBACK``."""
    block: list[Instruction] = []
    fallback_jumps: list[int] = []  # >0: patch jt; <0: patch jf
    if config_id is not None:
        block.append((_LDB_ABS, 0, 0, base))
        block.append((_ALU_AND_K, 0, 0, 0xE0))
        block.append((_JEQ_K, 0, 0, config_id << 5))  # jf -> fallback
        fallback_jumps.append(-(len(block) - 1))
    block.append((_LDB_ABS, 0, 0, base + worker_cid_offset))
    if slot_of is None or list(slot_of) == list(range(workers)):
        # Identity map: the worker byte is the index. A byte >= N falls back explicitly:
        # the group may hold more members than workers (per-connection sockets bound
        # later), and an index the kernel finds in range would pick one of those.
        block.append((_JGE_K, 0, 0, workers))  # jt -> fallback
        fallback_jumps.append(len(block) - 1)
        block.append((_RET_A, 0, 0, 0))
    else:
        block += _slot_chain(slot_of)
    block.append((_RET_K, 0, 0, FALLBACK_INDEX))
    _patch(block, fallback_jumps, len(block) - 1)
    return block


def _slot_chain(slot_of: Sequence[int]) -> list[Instruction]:
    """``ret slot_of[A]`` for each worker A that has a member; falls through for the
    rest (the caller's next instruction: its ``ret FALLBACK``)."""
    chain: list[Instruction] = []
    for w, slot in enumerate(slot_of):
        if slot >= 0:
            chain.append((_JEQ_K, 0, 1, w))
            chain.append((_RET_K, 0, 0, slot))
    return chain


def _spread_block(workers: int, slot_of: Sequence[int] | None) -> list[Instruction]:
    """Steer a long header by its DCID's first byte modulo the workers (the byte at
    payload offset 6); a worker with no member falls back to the hash."""
    block: list[Instruction] = [(_LDB_ABS, 0, 0, 6), (_ALU_MOD_K, 0, 0, workers)]
    if slot_of is None or list(slot_of) == list(range(workers)):
        return block + [(_RET_A, 0, 0, 0)]
    return block + _slot_chain(slot_of) + [(_RET_K, 0, 0, FALLBACK_INDEX)]


def _patch(prog: list[Instruction], jumps: Sequence[int], target: int) -> None:
    """Point the listed conditional jumps (>0: jt, <0: jf) of ``prog`` at ``target``."""
    for ref in jumps:
        at = abs(ref)
        code, jt, jf, k = prog[at]
        distance = target - at - 1
        if distance > _MAX_JUMP:
            raise ValueError("too many workers for one classic BPF program")
        prog[at] = (code, distance, jf, k) if ref > 0 else (code, jt, distance, k)


def steering_program(
    worker_cid_offset: int,
    workers: int,
    *,
    config_id: int | None = 0,
    slot_of: Sequence[int] | None = None,
    cid_length: int | None = None,
) -> list[Instruction]:
    """The classic BPF program that steers datagrams by the DCID's worker byte.

    ``worker_cid_offset`` is the CID offset of the worker byte (``ServerIdLayout.
    worker_cid_offset``); ``workers`` the number of workers. ``config_id`` (0..6) makes a
    CID of another QUIC-LB configuration fall back to the hash (None: do not check).
    ``slot_of[w]`` is the group index of worker ``w`` when it is not ``w`` itself (-1:
    worker ``w`` has no member now; its datagrams fall back to the hash).
    ``cid_length``: our CIDs' length. With it, long headers whose DCID has that length
    are steered too (Handshake packets, and the client's Initials once it has switched to
    our CID, reach their worker even after the client's address changed), and every other
    long header goes to worker ``DCID[0] mod workers`` (all copies of a client's first
    Initial to one worker, however the group's membership changes); the DCID's position
    in a long header is version-independent (RFC 8999). Without it, every long header
    falls back to the hash.
    """
    if not 0 < worker_cid_offset < 20:
        raise ValueError(f"worker byte offset must be 1..19, got {worker_cid_offset}")
    if not 1 <= workers <= 256:
        raise ValueError(f"workers must be 1..256, got {workers}")
    if slot_of is not None and len(slot_of) != workers:
        raise ValueError("slot_of needs one slot per worker")
    if config_id is not None and not 0 <= config_id <= 6:
        raise ValueError(f"config_id must be 0..6, got {config_id}")
    if cid_length is not None and not worker_cid_offset < cid_length <= 20:
        raise ValueError(f"cid_length must be {worker_cid_offset + 1}..20, got {cid_length}")
    short = _cid_block(1, worker_cid_offset, workers, config_id, slot_of)
    if cid_length is None:
        # ldb [0]; jset 0x80 -> ret FALLBACK (the short block's last instruction)
        head: list[Instruction] = [(_LDB_ABS, 0, 0, 0), (_JSET_K, 0, 0, 0x80)]
        prog = head + short
        _patch(prog, [1], len(prog) - 1)
        return prog
    # The long block's "no" (another DCID length, config or worker byte) lands on the
    # spread block, which takes the place of the block's own last "ret FALLBACK".
    long = _cid_block(6, worker_cid_offset, workers, config_id, slot_of)[:-1]
    spread_at = len(long)
    long += _spread_block(workers, slot_of)
    # ldb [0]; jset 0x80 ? long : short. long: ldb [5]; jeq cid_length ? block : spread
    prog = [(_LDB_ABS, 0, 0, 0), (_JSET_K, 0, len(long) + 2, 0x80),
            (_LDB_ABS, 0, 0, 5), (_JEQ_K, 0, 0, cid_length)]  # fmt: skip
    prog += long
    _patch(prog, [-3], 4 + spread_at)  # a DCID of another length -> the spread block
    prog += short
    if len(long) + 2 > _MAX_JUMP:
        raise ValueError("too many workers for one classic BPF program")
    return prog


def _fprog(program: Sequence[Instruction]) -> tuple[bytes, ctypes.Array[ctypes.c_char]]:
    """``struct sock_fprog`` bytes and the filter array it points to (keep it alive)."""
    filters = b"".join(struct.pack("=HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(filters, len(filters))
    return struct.pack("@HP", len(program), ctypes.addressof(buf)), buf


def attach_program(sock: socket.socket, program: Sequence[Instruction]) -> None:
    """Attach ``program`` to the reuseport group of ``sock`` (replaces any program)."""
    fprog, keep = _fprog(program)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    del keep


def detach_program(sock: socket.socket) -> None:
    """Remove the group's program (the kernel hashes the 4-tuple again)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
    except OSError:
        pass  # ENOENT: nothing attached


def _bind_member(family: int, sockaddr: tuple[object, ...], dual_stack: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        _set_buffers(sock, BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, SO_REUSEPORT, 1)
        if dual_stack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        bind_reuseport(sock, sockaddr)  # port 0: a port no other group holds
    except BaseException:
        sock.close()
        raise
    return sock


class ReuseportGroup:
    """N sockets bound to one address and port, member i at group index i.

    Bind the group before any other socket on the port (a per-connection socket bound
    first would share the hash with the listeners). Every member stays open until
    :meth:`close`, so the kernel never reorders the slots.
    """

    def __init__(self, sockets: list[socket.socket]) -> None:
        self.sockets = sockets
        self.program: list[Instruction] | None = None
        host, port = sockets[0].getsockname()[:2]
        self._address = (str(host), int(port))

    @classmethod
    def bind(cls, host: str, port: int, members: int) -> ReuseportGroup:
        if members < 1:
            raise ValueError(f"a reuseport group needs at least one member, got {members}")
        infos = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM, 0, socket.AI_PASSIVE
        )
        if not infos:
            raise OSError(f"cannot resolve {host!r}")
        family, _, _, _, sockaddr = infos[0]
        dual = family == socket.AF_INET6 and host in ("::", "")
        socks: list[socket.socket] = []
        try:
            first = _bind_member(family, sockaddr, dual)
            socks.append(first)
            bound = first.getsockname()
            addr = (bound[0], bound[1], *sockaddr[2:])  # port 0: everyone takes the first's
            for _ in range(members - 1):
                socks.append(_bind_member(family, addr, dual))
        except BaseException:
            for s in socks:
                s.close()
            raise
        return cls(socks)

    def __len__(self) -> int:
        return len(self.sockets)

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    def steer(
        self,
        worker_cid_offset: int,
        *,
        config_id: int | None = 0,
        slot_of: Sequence[int] | None = None,
        cid_length: int | None = None,
    ) -> None:
        """Attach the steering program for ``len(self)`` workers."""
        program = steering_program(
            worker_cid_offset, len(self.sockets), config_id=config_id, slot_of=slot_of,
            cid_length=cid_length,
        )
        attach_program(self.sockets[0], program)
        self.program = program

    def unsteer(self) -> None:
        detach_program(self.sockets[0])
        self.program = None

    def transport(self, index: int, backend: str = "auto") -> UdpTransport:
        """A transport over member ``index`` (it shares the socket: close the group,
        not the transport, when every process is done with it)."""
        return UdpTransport(self.sockets[index], backend=backend)

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        self.sockets = []
