"""The batched UDP datapath end to end: quicflow's server and client move 50 MB intact
through each backend, and the counters prove which backend carried them.

* loopback, in this process: ``gso`` and ``basic`` (SHA-256 of a pseudo-random payload);
* a veth pair between two network namespaces (MTU 1500), ``quicflow perf server`` in one
  and ``quicflow perf client --verify --max-datagram 1452`` in the other;
* GSO refused by the kernel (a socket without UDP checksums): the transfer still
  completes intact over the per-datagram fallback, and ``gso_fallbacks`` says so;
* GSO segments larger than the path MTU (1452 bytes on a loopback of MTU 1280, in a
  private namespace): the transfer still completes intact.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import quicflow
from quicflow.datapath import probe_capabilities
from quicflow.datapath.backends import receiver_for, recv_into_native

from .support import prereq
from .support.netns import netns_pair, run_in_private_netns
from .support.transfer import TransferOutcome, run_transfer

MIB = 1024 * 1024
SIZE = 50 * MIB
QUICFLOW = str(Path(sys.executable).parent / "quicflow")
CAPS = probe_capabilities(socket.AF_INET)


def _native_receive() -> bool:
    """Whether this process's sockets read with the native recvmmsg loop."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return receiver_for(sock) is recv_into_native


def _require_gso() -> None:
    prereq.require(CAPS.gso and CAPS.gro, "the kernel lacks UDP GSO/GRO")


def _check_intact(outcome: TransferOutcome, size: int) -> None:
    (result,) = outcome.results
    assert result.received == size
    assert result.download_intact, "the downloaded bytes differ (SHA-256)"
    assert result.upload_intact, "the uploaded bytes differ (SHA-256)"


# ---------------------------------------------------------------------------- loopback


@pytest.mark.parametrize("backend", ["gso", "basic"])
def test_50mb_on_loopback_through_each_backend(backend: str) -> None:
    if backend == "gso":
        _require_gso()
    outcome = run_transfer(server_host="127.0.0.1", size=SIZE, backend=backend, timeout=60)
    _check_intact(outcome, SIZE)
    client_dp = outcome.client_stats["datapath"]
    server_dp = outcome.server_stats["datapath"]
    assert client_dp["backend"] == backend
    assert server_dp["backend"] == backend
    for dp in (client_dp, server_dp):
        assert dp["gso_fallbacks"] == 0
        assert dp["truncated"] == 0
        assert dp["send_errors"] == 0
    # The server is the sender of the 50 MB.
    sent, calls = server_dp["datagrams_sent"], server_dp["syscalls_send"]
    assert sent >= SIZE // 1200
    ratio = sent / calls
    if backend == "gso":
        assert ratio >= 8, f"{sent} datagrams in {calls} send calls: GSO hardly batched"
        # GRO on the receiving side coalesced them too.
        received, rcalls = client_dp["datagrams_received"], client_dp["syscalls_recv"]
        assert received / rcalls >= 4, (received, rcalls)
    else:
        # One syscall per datagram (a call refused with EAGAIN is counted and retried).
        assert 0.95 <= ratio <= 1.0, f"{sent} datagrams in {calls} send calls"
        assert server_dp["send_syscalls_per_datagram"] >= 1.0
        # Without GRO every received buffer is one datagram: one recvmsg each in the
        # Python loop, at most 8 per recvmmsg in the native one.
        per_call = 8 if _native_receive() else 1
        assert client_dp["datagrams_received"] <= per_call * client_dp["syscalls_recv"]
    # The receiving endpoint demultiplexed the GRO batches by runs, not per segment.
    endpoint = outcome.client_stats["endpoint"]
    if backend == "gso":
        assert endpoint["lookups"] < endpoint["segments_received"] / 4, endpoint


# ---------------------------------------------------------------------------- veth pair


def _wait_listening(proc: subprocess.Popen[str], timeout: float) -> tuple[int, list[str]]:
    """Read the perf server's stderr until 'listening on HOST:PORT'; returns the port."""
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    fd = proc.stderr.fileno()
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode(errors="replace")
            seen.append(text)
            if text.startswith("listening on "):
                address = text[len("listening on ") :].split()[0]
                return int(address.rsplit(":", 1)[1]), seen
    raise AssertionError(f"the perf server did not start: {seen} (exit {proc.poll()})")


def _stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM (``ip netns exec`` execs the command: the pid is the server's); returns
    the rest of its stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    try:
        return proc.stderr.read() or ""
    except (OSError, ValueError):
        return ""


@pytest.mark.netns
@pytest.mark.parametrize("backend", ["gso", "basic"])
def test_50mb_across_a_veth_pair_between_namespaces(backend: str) -> None:
    prereq.require_root()
    prereq.require_binary("ip", "iproute2")
    if backend == "gso":
        _require_gso()
    with netns_pair(mtu=1500) as pair:
        pair.run(pair.a, ["ping", "-c1", "-W2", pair.b_ip], check=False)  # warm up ARP
        server = pair.popen(
            pair.b,
            [QUICFLOW, "perf", "server", "--host", pair.b_ip, "--port", "0",
             "--max-datagram", "1452", "--backend", backend],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            port, _ = _wait_listening(server, 30)
            client = pair.run(
                pair.a,
                [QUICFLOW, "perf", "client", "--host", pair.b_ip, "--port", str(port),
                 "--download", "50M", "--insecure", "--json", "--verify", "-q",
                 "--max-datagram", "1452", "--backend", backend, "--timeout", "20"],
                check=False, timeout=120,
            )  # fmt: skip
        finally:
            server_err = _stop(server)
        assert client.returncode == 0, f"client failed: {client.stderr.strip()}"
        report = json.loads(client.stdout)
        assert report["bytes_received"] == SIZE
        assert report["verified"] is True
        assert report["backend"] == backend
        assert report["gso_fallbacks"] == 0
        assert report["truncated"] == 0
        # 1452-byte datagrams crossed the 1500-byte link (1452 + 28 bytes of headers): the
        # 50 MiB came in fewer datagrams than 1200-byte ones could carry it in. (Not an
        # average size: the small datagrams among them, ACK_FREQUENCY and PING packets and
        # the short last packet of a chunk, vary from run to run: 1283 bytes in one run.)
        datagrams = report["datagrams_received"]
        assert datagrams < SIZE // 1200, (
            f"{datagrams} datagrams, {report['udp_bytes_received'] / datagrams:.0f} bytes "
            "on average: were the 1452-byte datagrams cut down?")
        assert "stopped:" in server_err and "sent 50.0 MiB" in server_err, server_err


# ---------------------------------------------------------------------------- GSO refused

SO_NO_CHECK = 11  # <asm-generic/socket.h>: a UDP socket without checksums cannot use GSO


def test_transfer_completes_when_gso_is_refused() -> None:
    # The kernel refuses every GSO send (EINVAL) of a socket that sends without UDP
    # checksums, while plain datagrams still go: each transport must resend the refused
    # chunk one datagram at a time, switch GSO off ("basic") and lose nothing.
    _require_gso()
    size, upload = 8 * MIB, 2 * MIB

    def refuse_gso(server: quicflow.QuicServer, conn: quicflow.QuicConnection) -> None:
        for transport in (server.runner.transport, conn.runner.transport):
            assert transport.backend == "gso"
            transport.socket.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)

    # the listener's own fallback is under test: no per-connection sockets
    outcome = run_transfer(
        server_host="127.0.0.1", size=size, upload=upload, backend="gso", before=refuse_gso,
        connection_sockets=0,
    )  # fmt: skip
    _check_intact(outcome, size)
    for side in (outcome.server_stats, outcome.client_stats):  # both sent bulk data
        dp = side["datapath"]
        assert dp["gso_fallbacks"] >= 1, dp
        assert dp["backend"] == "basic", dp
        assert dp["send_errors"] == 0, dp
    server_dp = outcome.server_stats["datapath"]
    assert server_dp["datagrams_sent"] >= size // 1200


@pytest.mark.netns
def test_gso_segments_larger_than_the_path_mtu() -> None:
    # In a private namespace whose loopback has MTU 1280, both ends are configured for
    # 1452-byte datagrams: the kernel refuses GSO sends of 1452-byte segments. The
    # transfer must still complete intact, the refusal being handled either by the
    # per-datagram fallback (GSO off; IPv4 then fragments) or as a path-MTU drop (the
    # connections lower their datagram size to what fits: 1280 - 28 bytes).
    prereq.require_root()
    prereq.require_binary("ip", "iproute2")
    _require_gso()
    size, upload = 8 * MIB, 2 * MIB

    def transfer() -> TransferOutcome:
        return run_transfer(
            server_host="127.0.0.1", size=size, upload=upload, backend="gso",
            max_datagram_size=1452, timeout=60,
        )  # fmt: skip

    outcome = run_in_private_netns([["ip", "link", "set", "lo", "mtu", "1280"]], transfer)
    _check_intact(outcome, size)
    (server_conn,) = outcome.server_stats["connections"]
    sides = (
        ("server", outcome.server_stats["datapath"], server_conn),
        ("client", outcome.client_stats["datapath"], outcome.client_stats["connection"]),
    )
    for name, dp, conn in sides:  # both sent bulk data
        fell_back = dp["gso_fallbacks"] >= 1 and dp["backend"] == "basic"
        lowered = dp.get("pmtu_drops", 0) >= 1 and conn["max_datagram_size"] <= 1280 - 28
        assert fell_back or lowered, (name, dp, conn["max_datagram_size"])
