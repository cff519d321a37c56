"""The reuseport group and its CBPF steering program, with plain UDP sockets.

What the kernel does is measured here, not assumed: a short header goes to the member
named by its worker byte; a long header (and a CID of another config, or a worker byte
with no member) falls back to the 4-tuple hash; closing a member moves the last one into
its slot, which a re-attached program with a worker -> slot map corrects.
"""

from __future__ import annotations

import random
import select
import socket
import struct
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicflow.datapath.handoff import (
    CidRoute,
    HandoffInboxes,
    SteeringTransport,
    decode_handoff,
    encode_handoff,
)
from quicflow.datapath.reuseport import (
    FALLBACK_INDEX,
    ReuseportGroup,
    attach_program,
    steering_program,
)
from quicflow.datapath.socket import UdpTransport

WORKER_OFFSET = 2  # CID offset of the worker byte: first octet, host byte, worker byte


def short_header(worker: int, config_id: int = 0, host: int = 0) -> bytes:
    return bytes([0x40, (config_id << 5) | 7, host, worker]) + b"\x00" * 5 + b"payload" * 4


def long_header() -> bytes:
    return bytes([0xC0, 0, 0, 0, 1, 8]) + b"\x11" * 8 + b"\x00" * 40


def handshake_header(worker: int, cid_length: int = 8, config_id: int = 0) -> bytes:
    """A v1 Handshake packet's first bytes with a DCID of ``cid_length`` naming ``worker``."""
    dcid = bytes([(config_id << 5) | (cid_length - 1), 0, worker]).ljust(cid_length, b"\x05")
    return bytes([0xE0, 0, 0, 0, 1, cid_length]) + dcid + b"\x00" * 40


def receive_all(socks: list[socket.socket], expected: int) -> list[tuple[int, bytes, tuple]]:
    """(member index, data, source) of ``expected`` datagrams over the members."""
    out: list[tuple[int, bytes, tuple]] = []
    while len(out) < expected:
        ready, _, _ = select.select(socks, [], [], 2.0)
        assert ready, f"only {len(out)} of {expected} datagrams arrived"
        for s in ready:
            while True:
                try:
                    data, addr = s.recvfrom(2048)
                except BlockingIOError:
                    break
                out.append((socks.index(s), data, addr))
    return out


def assert_hashed_by_source(group, clients, rounds: list[bytes]) -> None:
    """Every client sends each of ``rounds`` to the group: each source lands on one
    member for all of them (the 4-tuple hash), and the sources spread over more than
    one member."""
    member_of: dict[tuple, set[int]] = {}
    for payload in rounds:
        for c in clients:
            c.sendto(payload, group.address)
        for member, _, addr in receive_all(group.sockets, len(clients)):
            member_of.setdefault(addr, set()).add(member)
    assert all(len(m) == 1 for m in member_of.values())
    assert len({next(iter(m)) for m in member_of.values()}) > 1


@pytest.fixture
def group():
    g = ReuseportGroup.bind("127.0.0.1", 0, 3)
    for s in g.sockets:
        s.setblocking(False)
    yield g
    g.close()


@pytest.fixture
def clients():
    socks = []
    for _ in range(48):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    yield socks
    for s in socks:
        s.close()


def test_group_members_share_one_port(group):
    ports = {s.getsockname()[1] for s in group.sockets}
    assert ports == {group.address[1]} and group.address[1] != 0


def test_short_headers_go_to_the_member_their_worker_byte_names(group, clients):
    group.steer(WORKER_OFFSET)
    for i, c in enumerate(clients):
        c.sendto(short_header(i % 3), group.address)
    got = receive_all(group.sockets, len(clients))
    assert all(member == data[3] for member, data, _ in got)
    assert Counter(member for member, _, _ in got) == {0: 16, 1: 16, 2: 16}


def test_long_headers_and_foreign_cids_fall_back_to_the_4_tuple_hash(group, clients):
    group.steer(WORKER_OFFSET)
    rounds = [long_header(), long_header(), short_header(3), short_header(1, config_id=2)]
    # Each source lands on one member for all four kinds (the hash), and the hash
    # spreads the sources over more than one member.
    assert_hashed_by_source(group, clients, rounds)


def test_long_headers_with_our_cid_length_follow_the_worker_byte(group, clients):
    """Given our CID length, Handshake packets (and later Initials) go to the worker
    their DCID names from any source address; other DCID lengths, other configs and
    worker bytes with no member still fall back to the 4-tuple hash."""
    group.steer(WORKER_OFFSET, cid_length=8)
    for i, c in enumerate(clients):
        c.sendto(handshake_header(i % 3), group.address)
    got = receive_all(group.sockets, len(clients))
    assert all(member == data[8] for member, data, _ in got)
    assert Counter(member for member, _, _ in got) == {0: 16, 1: 16, 2: 16}
    # Short headers are steered as before by the same program.
    for i, c in enumerate(clients):
        c.sendto(short_header(i % 3), group.address)
    assert all(m == d[3] for m, d, _ in receive_all(group.sockets, len(clients)))
    # Every other long header goes to the member its DCID's first byte names modulo 3,
    # from any source; a short header of another config still falls back to the hash.
    others = [handshake_header(1, cid_length=12), handshake_header(2, config_id=3),
              handshake_header(7), long_header()]  # fmt: skip
    for payload in others:
        for c in clients[:8]:
            c.sendto(payload, group.address)
        got = receive_all(group.sockets, 8)
        assert {m for m, _, _ in got} == {payload[6] % 3}
    assert_hashed_by_source(group, clients, [short_header(1, config_id=2)])


def initial_header(dcid: bytes) -> bytes:
    return bytes([0xC0, 0, 0, 0, 1, len(dcid)]) + dcid + b"\x00" * 40


def test_a_clients_first_initials_reach_one_worker_from_any_address(group, clients):
    """Every copy of a client's first Initial (its random DCID, RFC 9000 §7.2) reaches
    the worker DCID[0] mod N: from a new client address too, and while a
    per-connection socket sits between its bind and its connect. The kernel's fallback
    hash, measured here as well, does neither: a resent Initial would reach another
    worker (or that socket), which would make a second connection for the client."""
    rng = random.Random(7)
    dcids = [rng.randbytes(rng.randrange(8, 21)) for _ in clients]
    half = len(clients) // 2

    def members(senders: list[socket.socket], socks: list[socket.socket]) -> dict[bytes, int]:
        for c, dcid in zip(senders, dcids[: len(senders)], strict=True):
            c.sendto(initial_header(dcid), group.address)
        got = receive_all(socks, len(senders))
        return {d[6 : 6 + d[5]]: m for m, d, _ in got}

    def unconnected_members(n: int) -> list[socket.socket]:
        out = []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(group.address)
            s.setblocking(False)
            out.append(s)
        return out

    # Without our CID length the program leaves long headers to the kernel's hash.
    group.steer(WORKER_OFFSET)
    before = members(clients[:half], group.sockets)
    again = members(clients[half:], group.sockets)  # the same DCIDs from other addresses
    moved_by_address = sum(before[d] != m for d, m in again.items())
    extra = unconnected_members(3)
    try:
        during = members(clients[:half], group.sockets + extra)
    finally:
        for s in extra:
            s.close()
    assert moved_by_address > 0
    assert sum(before[d] != m for d, m in during.items()) > 0

    group.steer(WORKER_OFFSET, cid_length=8)
    expected = {d: d[0] % 3 for d in dcids[:half]}
    assert members(clients[:half], group.sockets) == expected
    assert members(clients[half:], group.sockets) == expected  # other source addresses
    extra = unconnected_members(3)
    try:
        assert members(clients[:half], group.sockets + extra) == expected
    finally:
        for s in extra:
            s.close()


def test_long_header_steering_with_a_slot_map(group, clients):
    group.steer(WORKER_OFFSET, cid_length=8, slot_of=[2, 0, 1])
    for i, c in enumerate(clients[:24]):
        c.sendto(handshake_header(i % 3), group.address)
        c.sendto(short_header(i % 3), group.address)
    got = receive_all(group.sockets, 48)
    worker_at = {2: 0, 0: 1, 1: 2}
    assert all(worker_at[m] == (d[8] if d[0] & 0x80 else d[3]) for m, d, _ in got)
    # A client's first Initial: worker DCID[0] mod 3 = 0x11 mod 3 = 2, at slot 1.
    for c in clients[:8]:
        c.sendto(long_header(), group.address)
    assert {m for m, _, _ in receive_all(group.sockets, 8)} == {1}


def test_without_a_program_the_kernel_hashes_the_4_tuple(group, clients):
    for c in clients:
        c.sendto(short_header(0), group.address)
    members = {member for member, _, _ in receive_all(group.sockets, len(clients))}
    assert len(members) > 1  # worker byte 0 does not decide anything


def test_closing_a_member_moves_the_last_into_its_slot(group, clients):
    """The kernel fact the group works around, and the re-attached map that fixes it."""
    group.steer(WORKER_OFFSET)
    socks = group.sockets
    socks[0].close()  # slot 0 now holds member 2
    live = [socks[1], socks[2]]
    for c in clients[:8]:
        c.sendto(short_header(0), group.address)
    got = receive_all(live, 8)
    assert {live[m] for m, _, _ in got} == {socks[2]}  # worker 0's byte reaches member 2
    # Re-attach with the map: worker 0 gone (hash), worker 1 at slot 1, worker 2 at slot 0.
    attach_program(socks[1], steering_program(WORKER_OFFSET, 3, slot_of=[-1, 1, 0]))
    for i, c in enumerate(clients[:16]):
        c.sendto(short_header(1 + i % 2), group.address)
    got = receive_all(live, 16)
    assert all((live[m] is socks[1]) == (data[3] == 1) for m, data, _ in got)
    group.sockets = live


def test_program_shape():
    prog = steering_program(WORKER_OFFSET, 4)
    assert prog[-1] == (0x06, 0, 0, FALLBACK_INDEX)
    assert prog[-2] == (0x16, 0, 0, 0)  # ret A: the worker byte is the index
    with pytest.raises(ValueError):
        steering_program(0, 2)
    with pytest.raises(ValueError):
        steering_program(2, 2, slot_of=[0])
    with pytest.raises(ValueError):
        steering_program(2, 2, cid_length=2)  # the worker byte would lie beyond the CID
    long = steering_program(WORKER_OFFSET, 4, cid_length=8)
    assert long[-1] == (0x06, 0, 0, FALLBACK_INDEX) and long[-2] == (0x16, 0, 0, 0)
    code, jt, jf, k = long[3]  # DCID length 8, or the spread block: DCID[0] mod 4
    assert (code, jt, k) == (0x15, 0, 8)
    assert long[3 + 1 + jf : 3 + 4 + jf] == [(0x30, 0, 0, 6), (0x94, 0, 0, 4), (0x16, 0, 0, 0)]


def test_handoff_message_round_trip():
    data = bytes(range(256)) * 5
    entry = decode_handoff(encode_handoff(data, 300, ("::ffff:127.0.0.1", 4433), 2))
    assert entry == (data, 300, ("::ffff:127.0.0.1", 4433), 2)
    assert decode_handoff(b"\x00") is None


def test_misrouted_datagrams_are_handed_to_their_owner(clients):
    """No program: the hash puts datagrams on any member; every one still reaches the
    transport of the worker its CID names, with the client's address and ECN bits."""
    group = ReuseportGroup.bind("127.0.0.1", 0, 2)
    inboxes = HandoffInboxes(2)
    route = CidRoute(cid_length=8, config_id=0, host_part=b"\x00", workers=2)
    transports = [SteeringTransport(group.sockets[i], route, i, inboxes) for i in range(2)]
    try:
        for i, c in enumerate(clients):
            c.sendto(short_header(i % 2) + bytes([i]), group.address)
        seen: dict[int, list[tuple[bytes, tuple]]] = {0: [], 1: []}
        for _ in range(200):
            for w, t in enumerate(transports):
                for data, _seg, addr, _ecn in t.recv_batch(16):
                    seen[w].append((bytes(data), addr))
            if sum(map(len, seen.values())) == len(clients):
                break
            select.select([t.fileno() for t in transports] + inboxes.receivers, [], [], 0.05)
        assert sum(map(len, seen.values())) == len(clients)
        for w in (0, 1):
            assert all(data[3] == w for data, _ in seen[w])
            for data, addr in seen[w]:
                assert addr[1] == clients[data[-1]].getsockname()[1]
        misrouted = sum(t.misrouted_datagrams for t in transports)
        assert misrouted == sum(t.handed_over_datagrams for t in transports)
        assert misrouted > 0  # 48 sources over 2 members: some landed on the wrong one
    finally:
        inboxes.close()
        group.close()


def test_strays_of_a_workers_connection_socket_reach_their_owner(clients):
    """A per-connection socket is bound to the port before it is connected, and may
    queue other clients' datagrams meanwhile; the runner passes those strays to its
    listener's ``claim``: a worker keeps its own and hands the others' over, with the
    client's address (datagrams the hash gave it without steering, or long headers)."""
    group = ReuseportGroup.bind("127.0.0.1", 0, 2)
    inboxes = HandoffInboxes(2)
    route = CidRoute(cid_length=8, config_id=0, host_part=b"\x00", workers=2)
    transports = [SteeringTransport(group.sockets[i], route, i, inboxes) for i in range(2)]
    try:
        addr = clients[0].getsockname()
        data = [short_header(w) + bytes([i]) for i, w in enumerate([0, 1, 1])]
        kept = transports[0].claim([(d, len(d), addr, 0) for d in data])
        assert [bytes(d)[-1] for d, _, _, _ in kept] == [0]
        assert transports[0].misrouted_datagrams == 2
        got: list[tuple[bytes, tuple]] = []
        for _ in range(100):
            got += [(bytes(d), a) for d, _, a, _ in transports[1].recv_batch(16)]
            if len(got) == 2:
                break
            select.select(inboxes.receivers, [], [], 0.05)
        assert sorted(d[-1] for d, _ in got) == [1, 2]
        assert all(a[1] == addr[1] for _, a in got)
        assert UdpTransport.claim(transports[0], kept) == kept  # a lone server keeps all
    finally:
        inboxes.close()
        group.close()


def test_worker_bytes_beyond_the_workers_never_pick_a_later_member(clients):
    """A connected socket bound to the port after the listeners joins the group at index
    N; a worker byte >= N must reach a listener, never that socket (the program falls
    back by itself; this kernel also re-scores a pick when the group has connected
    members)."""
    group = ReuseportGroup.bind("127.0.0.1", 0, 2)
    extra = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        extra.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        extra.bind(group.address)
        extra.connect(clients[0].getsockname())  # a per-connection socket for client 0
        extra.setblocking(False)
        for s in group.sockets:
            s.setblocking(False)
        group.steer(WORKER_OFFSET)
        for c in clients[1:]:
            c.sendto(short_header(2), group.address)
        got = receive_all([*group.sockets, extra], len(clients) - 1)
        assert all(member < 2 for member, _, _ in got)
    finally:
        extra.close()
        group.close()


def test_a_gro_batch_is_split_where_the_owner_changes(require):
    """One GSO send of segments for workers 0, 1, 1, 0 arrives as one GRO buffer on one
    member; each worker gets exactly its segments, in order, runs kept as GRO runs."""
    from quicflow.datapath.constants import SOL_UDP, UDP_SEGMENT

    group = ReuseportGroup.bind("127.0.0.1", 0, 2)
    inboxes = HandoffInboxes(2)
    route = CidRoute(cid_length=8, config_id=0, host_part=b"\x00", workers=2)
    transports = [SteeringTransport(group.sockets[i], route, i, inboxes, backend="gso")
                  for i in range(2)]  # fmt: skip
    require(transports[0].backend == "gso", "needs GSO and GRO")
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        size = 100
        owners = [0, 1, 1, 0]
        segs = [(short_header(w) + bytes([i]) * size)[:size] for i, w in enumerate(owners)]
        sender.sendmsg([b"".join(segs)], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))],
                       0, group.address)  # fmt: skip
        got: dict[int, list[tuple[bytes, int]]] = {0: [], 1: []}
        for _ in range(100):
            for w, t in enumerate(transports):
                got[w] += [(bytes(d), s) for d, s, _a, _e in t.recv_batch(8)]
            if sum(len(d) for v in got.values() for d, _ in v) == size * 4:
                break
            select.select([t.fileno() for t in transports] + inboxes.receivers, [], [], 0.05)
        assert b"".join(d for d, _ in got[0]) == segs[0] + segs[3]
        assert b"".join(d for d, _ in got[1]) == segs[1] + segs[2]
        assert all(s == size for v in got.values() for _, s in v)
        receiver = 0 if transports[0].counters.datagrams_received else 1
        assert transports[receiver].misrouted_datagrams == 2  # the other worker's two
        assert transports[1 - receiver].handed_over_datagrams == 2
    finally:
        sender.close()
        inboxes.close()
        group.close()


@given(
    segments=st.lists(
        st.tuples(st.sampled_from([0x40, 0x41, 0xC0, 0xE0]), st.integers(0, 255),
                  st.integers(0, 2), st.integers(0, 3)),
        min_size=1, max_size=12,
    ),
    last_cut=st.integers(0, 30),
)  # fmt: skip
def test_the_gro_fast_path_agrees_with_the_per_segment_owner(segments, last_cut):
    """``all_short_and_owned_by`` (strided slices) says yes exactly when every segment's
    ``owner()`` is the worker, whatever the header forms, config ids and host bytes."""
    route = CidRoute(cid_length=8, config_id=0, host_part=b"\x01", workers=3)
    size = 40
    parts = []
    for first, cfg_byte, host, worker in segments:
        if first & 0x80:  # long header: version, DCID length 8, DCID
            seg = bytes([first, 0, 0, 0, 1, 8, cfg_byte, host, worker])
        else:
            seg = bytes([first, cfg_byte, host, worker])
        parts.append(seg.ljust(size, b"\x00"))
    data = b"".join(parts)
    data = data[: max(len(data) - last_cut, len(data) - size + 1)]
    owners = [route.owner(data, pos, min(pos + size, len(data)))
              for pos in range(0, len(data), size)]  # fmt: skip
    for worker in range(3):
        expected = all(o == worker for o in owners) and not any(p[0] & 0x80 for p in parts)
        assert route.all_short_and_owned_by(data, size, worker) == expected


def test_port_zero_takes_a_port_no_other_reuseport_socket_holds():
    """Linux's search for a free port counts a port held only by SO_REUSEPORT sockets of
    the same user as free, so a listener bound to port 0 used to land now and then on
    another server's port and join its reuseport group; the kernel then split both
    servers' datagrams among all members (under a loaded suite, a worker group saw
    another server's datagrams as misrouted). With 2,000 such ports held on one address,
    100 groups and 100 single listeners bound to port 0 each get a port nobody held
    (without the probe, about 14 of them landed on a held port)."""
    import fcntl
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 8192:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))
    host = "127.0.0.93"  # loopback, an address of its own: the ports held here stay here
    held: list[int] = []  # descriptors above 4096: select() (the capability probe) stays usable
    taken = set()
    try:
        for _ in range(2000):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind((host, 0))
                taken.add(s.getsockname()[1])
                held.append(fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 4096))
        landed = []
        for _ in range(100):
            group = ReuseportGroup.bind(host, 0, 2)
            transport = UdpTransport.open(host, 0, reuse_port=True, buffer_bytes=0)
            try:
                landed += [group.address[1], transport.local_address[1]]
                assert {s.getsockname()[1] for s in group.sockets} == {group.address[1]}
            finally:
                group.close()
                transport.close()
        assert len(landed) == 200
        assert [p for p in landed if p in taken] == []
    finally:
        for fd in held:
            os.close(fd)
