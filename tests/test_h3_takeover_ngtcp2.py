"""HTTP/3 live migration (issue 7) under ngtcp2's native HTTP/3 client (Debian
``ngtcp2-client``'s ``gtlsclient``: its own QPACK, timers, key updates and CID handling;
it knows nothing of quicflow).

Same host: ``tests/support/h3_takeover_server.py`` (quicflow's h3 asyncio face with
``migratable=True``) stalls each response after STALL bytes and says so on stderr, so
the successor process takes over mid-body every time and continues the response from
``stream.body_sent`` (``capture_request``/``resume_request``). Checked: the saved body's
SHA-256 (gtlsclient ``--download``), one handshake in gtlsclient's log and its
CONNECTION_CLOSE with H3_NO_ERROR (it exits 0 even after a stall, so its status alone
proves nothing), the old process's exit status and hand-off count, the successor's
endpoint counters (no new handshake; it sealed the rest of the body). Around that: two
workers, a move to another server (``move_to``), gtlsclient's own key update and
address change on either side of the switch, loss, two takeovers in a row, 16
concurrent responses, uploads, and ``quicflow serve`` (ASGI) resetting what cannot move.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quicflow.h3.errors import H3_NO_ERROR
from tests.support import ngtcp2
from tests.support.h3_takeover_server import body_slice
from tests.support.prereq import have_module
from tests.support.takeover import write_certificate
from tests.test_h3_takeover import H3ServerProc, _wait_lines

pytestmark = pytest.mark.interop
MB = 1 << 20
SIZE = 40 * MB
STALL = 8 * MB
HANDSHAKE_DONE = "QUIC handshake has completed"  # gtlsclient logs it once per handshake
PAYLOAD = 1500  # no 1-RTT packet carries more body bytes than this


@pytest.fixture(autouse=True)
def _tools(require: Callable[[bool, str], None]) -> None:
    require(ngtcp2.available(), "gtlsserver/gtlsclient not installed (make deps: "
                                "Debian ngtcp2-server, ngtcp2-client)")
    require(have_module("pylsqpack"), "pylsqpack not installed (pip install 'quicflow[h3]')")


def _servers(tmp_path: Path, *extra: str, old_extra: tuple[str, ...] = (),
             new_extra: tuple[str, ...] = (), stall: int = STALL
             ) -> tuple[H3ServerProc, H3ServerProc]:
    cert, key = write_certificate(tmp_path)
    path = str(tmp_path / "handoff.sock")
    common = ["--cert", cert, "--key", key, *extra]
    old = H3ServerProc([*common, "--handoff", path, "--stall-after", str(stall), *old_extra])
    new = H3ServerProc([*common, "--takeover", path, *new_extra], wait_for_go=True)
    return old, new


Stall = tuple[int, int, int, dict[str, int]]
_STALLED = re.compile(r"stalled after (\d+) of (\d+) bytes in process (\d+) \((.*)\)$")


def _counts(text: str) -> dict[str, int]:
    """``{"key-update": K, "path-change": P}`` from "key-update: K, path-change: P"."""
    return {name: int(n) for name, n in (part.split(": ") for part in text.split(", "))}


def _stalls(proc: H3ServerProc, count: int) -> list[Stall]:
    """(body bytes sent, size, process id, what the connection had seen: key updates
    received, path changes) of the first ``count`` stalled responses."""
    out = []
    for line in _wait_lines(proc, "stalled after ", count):
        m = _STALLED.match(line)
        assert m is not None, line
        out.append((int(m[1]), int(m[2]), int(m[3]), _counts(m[4])))
    return out


def _take_over(old: H3ServerProc, new: H3ServerProc) -> tuple[int, dict[str, Any] | None]:
    new.go()
    status, doc = old.finish()
    new.wait_line("listening on ")
    return status, doc


def _successor_endpoint(new: H3ServerProc) -> dict[str, Any]:
    status, summary = new.stop()
    assert status == 0 and summary is not None
    endpoint: dict[str, Any] = summary["endpoint"]
    return endpoint


def _check_client(status: int, log: str, into: Path, name: str, size: int) -> None:
    assert status == 0, log[-2000:]
    ngtcp2.check_downloads(into, {name: body_slice(0, size)}, log)
    assert log.count(HANDSHAKE_DONE) == 1, "one handshake, before the switch"
    assert ngtcp2.closes(log, "tx") == [H3_NO_ERROR]
    assert ngtcp2.closes(log, "rx") == []


def _download_across_takeover(tmp_path: Path, old: H3ServerProc, new: H3ServerProc,
                              size: int, *options: str) -> tuple[str, Stall]:
    """gtlsclient (with ``options``) downloads ``size`` bytes; the successor takes over
    once the old process stalled. Checks the client's side and the old process's exit;
    returns gtlsclient's log and the stall (see :func:`_stalls`)."""
    into = tmp_path / "down"
    into.mkdir()

    async def go() -> tuple[int, str, list[Stall], tuple[int, Any]]:
        loop = asyncio.get_running_loop()
        port = old.port()
        client = asyncio.ensure_future(ngtcp2.gtlsclient(
            port, [f"https://127.0.0.1:{port}/bytes/{size}"], f"--download={into}",
            *options, log_path=tmp_path / "gtlsclient.log", timeout=90))
        stalls = await loop.run_in_executor(None, _stalls, old, 1)
        switched = await loop.run_in_executor(None, _take_over, old, new)
        status, log = await client
        return status, log, stalls, switched

    status, log, stalls, (old_status, doc) = asyncio.run(go())
    assert len(stalls) == 1 and stalls[0][1:3] == (size, old.proc.pid)
    assert STALL <= stalls[0][0] < size, "the switch landed mid-body"
    _check_client(status, log, into, str(size), size)
    assert old_status == 0 and doc == {"handed_off_connections": 1}
    return log, stalls[0]


@pytest.mark.timeout(120)
def test_gtlsclient_download_survives_takeover_mid_body(tmp_path: Path) -> None:
    """gtlsclient downloads SIZE bytes; the server process is replaced after STALL of
    them; the successor sends the rest on the same connection."""
    old, new = _servers(tmp_path)
    try:
        _, stall = _download_across_takeover(tmp_path, old, new, SIZE)
        assert stall == (STALL, SIZE, old.proc.pid, {"key-update": 0, "path-change": 0})
        endpoint = _successor_endpoint(new)
        assert endpoint["connections_accepted"] == 0, "no new handshake after the switch"
        assert endpoint["engine_packets_sealed"] * PAYLOAD >= SIZE - STALL, \
            "the successor sent the rest of the body"
    finally:
        old.kill()
        new.kill()


@pytest.mark.timeout(180)
def test_gtlsclient_downloads_survive_workers_takeover_mid_body(tmp_path: Path) -> None:
    """``--workers 2`` taken over by ``--workers 2``: gtlsclient downloads on connections
    of both workers (clients are added until both have one stalled mid-body), every
    worker hands its connections to its successor worker, every body arrives whole on
    its one connection."""
    size = 16 * MB
    old, new = _servers(tmp_path, "--workers", "2")
    clients: list[tuple[asyncio.Future[tuple[int, str]], Path]] = []

    async def go() -> tuple[list[tuple[int, str]], list[Stall],
                            tuple[int, Any]]:
        loop = asyncio.get_running_loop()
        port = old.port()
        stalls: list[Stall] = []
        while len(stalls) < 2 or len({s[2] for s in stalls}) < 2:
            assert len(stalls) < 4, f"connections not spread over the workers: {stalls}"
            into = tmp_path / f"down{len(clients)}"
            into.mkdir()
            # The steering program sends a client's first Initial to worker DCID[0] mod 2
            # (DCID length 18 is not ours): consecutive clients' DCIDs alternate that bit,
            # so two clients land on both workers unless steering is broken (a random
            # DCID put 8 in a row on one worker once in CI).
            dcid = bytes([len(clients) % 2]) + os.urandom(17)
            clients.append((asyncio.ensure_future(ngtcp2.gtlsclient(
                port, [f"https://127.0.0.1:{port}/bytes/{size}"], f"--download={into}",
                "--timeout=60s", f"--dcid={dcid.hex()}",
                log_path=tmp_path / f"gtlsclient{len(clients)}.log", timeout=150)), into))
            stalls = await loop.run_in_executor(None, _stalls, old, len(clients))
        switched = await loop.run_in_executor(None, _take_over, old, new)
        results = [await client for client, _ in clients]
        return results, stalls, switched

    try:
        results, stalls, (old_status, doc) = asyncio.run(go())
        n = len(results)
        assert n == 2, "the Initials' DCIDs steer the first two clients to both workers"
        assert all(sent == STALL and whole == size for sent, whole, _, _ in stalls), stalls
        for (status, log), (_, into) in zip(results, clients, strict=True):
            _check_client(status, log, into, str(size), size)
        assert old_status == 0 and doc == {"handed_off_connections": n}
        endpoint = _successor_endpoint(new)
        assert endpoint["connections_accepted"] == 0, "no new handshake after the switch"
        # (the workers report no engine counters; the old ones stopped at STALL bytes)
        assert endpoint["datagrams_received"] > 0
    finally:  # (asyncio.run cancelled any gtlsclient still running)
        old.kill()
        new.kill()


def _move_files(tmp_path: Path) -> tuple[dict[str, tuple[str, str]], str]:
    """Server certificates for hosts a and b (also client certificates for the mutually
    authenticated move channel) under one CA: ({name: (cert, key)}, CA file)."""
    from quicflow.tls.certs import (
        certificate_pem,
        generate_ca,
        issue_certificate,
        private_key_pem,
    )

    ca, ca_key = generate_ca("h3 move CA")
    (tmp_path / "ca.pem").write_bytes(certificate_pem(ca))
    files = {}
    for name in ("a", "b"):
        cert, key = issue_certificate(ca, ca_key, ["localhost", "127.0.0.1"],
                                      client_auth=True)
        (tmp_path / f"{name}.pem").write_bytes(certificate_pem(cert))
        (tmp_path / f"{name}.key").write_bytes(private_key_pem(key))
        files[name] = (str(tmp_path / f"{name}.pem"), str(tmp_path / f"{name}.key"))
    return files, str(tmp_path / "ca.pem")


@pytest.mark.timeout(120)
def test_gtlsclient_download_moves_to_another_server_mid_response(tmp_path: Path) -> None:
    """``H3Server.move_to`` (issue 7 item 4a) under gtlsclient: server A stalls its
    response after ``stall`` bytes, moves the connection to server B (the move channel:
    mutually authenticated TLS over TCP) and a relay standing for the router switches
    the route to B; B sends the rest on the same connection (one process holds A, B and
    the relay; gtlsclient is its own process)."""
    from dataclasses import replace

    from quicflow.h3 import aio as h3
    from quicflow.migration.transfer import client_context, server_context
    from tests.support.h3_takeover_server import send_body
    from tests.support.quic_helpers import server_config
    from tests.support.relay import LossyUdpRelay

    files, ca_file = _move_files(tmp_path)
    size, stall = 12 * MB, 3 * MB
    into = tmp_path / "down"
    into.mkdir()

    async def go() -> tuple[int, str, int, int, int]:
        stalled = asyncio.Event()
        handled = {"a": 0, "b": 0}

        def capture_request(stream: h3.H3Stream) -> Any:
            return {"size": size}

        async def resume_request(stream: h3.H3Stream, state: Any) -> None:
            handled["b"] += 1
            await send_body(stream, int(state["size"]), None)

        async def handler_a(stream: h3.H3Stream) -> None:
            handled["a"] += 1
            await stream.read()
            stream.send_headers([(":status", "200"), ("content-length", str(size))])
            async def on_stall() -> None:
                stalled.set()

            await send_body(stream, size, stall, on_stall)

        config = replace(server_config(), alpn_protocols=["h3"])
        a = await h3.serve(handler_a, "127.0.0.1", 0, configuration=config,
                           migratable=True, capture_request=capture_request)
        b = await h3.serve(handler_a, "127.0.0.1", 0, configuration=config,
                           migratable=True, resume_request=resume_request)
        receiver = await b.server.accept_moves(  # type: ignore[union-attr]
            "127.0.0.1", 0, server_context(*files["b"], ca_file))
        relay = await LossyUdpRelay(("127.0.0.1", a.address[1])).start()
        try:
            port = relay.address[1]
            client = asyncio.ensure_future(ngtcp2.gtlsclient(
                port, [f"https://127.0.0.1:{port}/bytes/{size}"], f"--download={into}",
                log_path=tmp_path / "gtlsclient.log", timeout=60))
            await asyncio.wait_for(stalled.wait(), 30)
            moved = await a.move_to(receiver.address[0], receiver.address[1],
                                    client_context(*files["a"], ca_file),
                                    server_name="localhost")
            relay.server_addr = ("127.0.0.1", b.address[1])
            status, log = await client
            accepted = b.stats()["endpoint"]["connections_accepted"]
            return status, log, moved, accepted, handled["b"]
        finally:
            await relay.close()
            receiver.close()
            a.close()
            b.close()

    status, log, moved, accepted, resumed = asyncio.run(go())
    assert moved == 1 and resumed == 1
    _check_client(status, log, into, str(size), size)
    assert accepted == 0, "B accepted no handshake: the moved connection went on"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("when", ["before", "after"])
def test_gtlsclient_key_update_across_takeover(tmp_path: Path, when: str) -> None:
    """gtlsclient starts a key update (RFC 9001 §6; ``--key-update``: once, that long
    after its handshake) on one side of the switch: ``before``: 10 ms after the
    handshake, and the old process stalls only once it has answered it, so the
    successor goes on in the new key phase; ``after``: 2 s after the handshake, while
    the old process has long stalled (with none received) and the successor trickles the
    body until the client's first packet under new keys reaches it, then sends the rest.
    Both: the body whole, one handshake, H3_NO_ERROR."""
    size = 16 * MB
    if when == "before":
        old, new = _servers(tmp_path, old_extra=("--before-stall", "key-update"))
        option = "--key-update=10ms"
    else:
        old, new = _servers(tmp_path, new_extra=("--after-resume", "key-update"))
        option = "--key-update=2s"
    try:
        log, (_, _, _, seen) = _download_across_takeover(tmp_path, old, new, size, option)
        assert log.count("Initiate key update") == 1, "gtlsclient started one key update"
        assert "key update confirmed" in log  # a packet under its new keys was acknowledged
        if when == "before":
            assert seen["key-update"] == 1, "the old process answered the key update"
        else:
            assert seen["key-update"] == 0, "no key update before the switch"
            line = new.wait_line("key-update after the switch at ")
            assert "(key-update: 1," in line, line
        endpoint = _successor_endpoint(new)
        assert endpoint["connections_accepted"] == 0, "no new handshake after the switch"
    finally:
        old.kill()
        new.kill()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("when", ["before", "after"])
def test_gtlsclient_address_change_across_takeover(tmp_path: Path, when: str) -> None:
    """gtlsclient moves to a new local port (``--change-local-addr``: with path
    validation, RFC 9000 §9) on one side of the switch: ``before``: 10 ms after the
    handshake, and the old process stalls only once it has followed it (a new path, a
    new connected socket), so that path and socket are handed over; ``after``: 2 s after
    the handshake, so the successor validates the new path of a connection it restored,
    with connection IDs the old process issued. Both: the body whole, one handshake,
    H3_NO_ERROR."""
    size = 16 * MB
    if when == "before":
        old, new = _servers(tmp_path, old_extra=("--before-stall", "path-change"))
        option = "--change-local-addr=10ms"
    else:
        old, new = _servers(tmp_path, new_extra=("--after-resume", "path-change"))
        option = "--change-local-addr=2s"
    try:
        log, (_, _, _, seen) = _download_across_takeover(tmp_path, old, new, size, option)
        assert log.count("Local address is now ") == 1, "gtlsclient moved once"
        if when == "before":
            assert seen["path-change"] == 1, "the old process followed the client"
        else:
            assert seen["path-change"] == 0, "no address change before the switch"
            line = new.wait_line("path-change after the switch at ")
            assert "path-change: 1)" in line, line
        endpoint = _successor_endpoint(new)
        assert endpoint["connections_accepted"] == 0, "no new handshake after the switch"
    finally:
        old.kill()
        new.kill()


@pytest.mark.timeout(120)
def test_gtlsclient_download_with_loss_survives_takeover(tmp_path: Path) -> None:
    """gtlsclient drops 5% of what it sends and receives, before and after the switch:
    what was in flight at the capture is recovered by the successor (RFC 9002 loss
    recovery on restored state), the body arrives whole on the one connection."""
    size = 16 * MB
    old, new = _servers(tmp_path)
    try:
        log, _ = _download_across_takeover(tmp_path, old, new, size, "--tx-loss=0.05",
                                           "--rx-loss=0.05")
        dropped_out, dropped_in = ngtcp2.simulated_losses(log)
        assert dropped_out > 0 and dropped_in > 0
        endpoint = _successor_endpoint(new)
        assert endpoint["connections_accepted"] == 0, "no new handshake after the switch"
    finally:
        old.kill()
        new.kill()


@pytest.mark.timeout(120)
def test_gtlsclient_download_survives_two_takeovers_in_a_row(tmp_path: Path) -> None:
    """One response, three processes: the first stalls after STALL bytes, the second
    takes over, continues to 2 * STALL and stalls, the third takes over from it (the
    restored connection is captured again) and sends the rest; gtlsclient sees one
    connection and the whole body."""
    size = 3 * STALL
    cert, key = write_certificate(tmp_path)
    path = str(tmp_path / "handoff.sock")
    common = ["--cert", cert, "--key", key]
    first = H3ServerProc([*common, "--handoff", path, "--stall-after", str(STALL)])
    second = H3ServerProc([*common, "--takeover", path, "--stall-after", str(2 * STALL)],
                          wait_for_go=True)
    third = H3ServerProc([*common, "--takeover", path], wait_for_go=True)
    into = tmp_path / "down"
    into.mkdir()

    async def go() -> tuple[int, str, list[Stall], list[tuple[int, Any]]]:
        loop = asyncio.get_running_loop()
        port = first.port()
        client = asyncio.ensure_future(ngtcp2.gtlsclient(
            port, [f"https://127.0.0.1:{port}/bytes/{size}"], f"--download={into}",
            log_path=tmp_path / "gtlsclient.log", timeout=90))
        stalls = await loop.run_in_executor(None, _stalls, first, 1)
        switches = [await loop.run_in_executor(None, _take_over, first, second)]
        stalls += await loop.run_in_executor(None, _stalls, second, 1)
        switches.append(await loop.run_in_executor(None, _take_over, second, third))
        status, log = await client
        return status, log, stalls, switches

    try:
        status, log, stalls, switches = asyncio.run(go())
        assert [(sent, pid) for sent, _, pid, _ in stalls] == [
            (STALL, first.proc.pid), (2 * STALL, second.proc.pid)]
        _check_client(status, log, into, str(size), size)
        assert switches == [(0, {"handed_off_connections": 1})] * 2
        endpoint = _successor_endpoint(third)
        assert endpoint["connections_accepted"] == 0, "no new handshake after the switches"
        assert endpoint["engine_packets_sealed"] * PAYLOAD >= size - 2 * STALL
    finally:
        for proc in (first, second, third):
            proc.kill()


@pytest.mark.timeout(120)
def test_quicflow_serve_asgi_takeover_resets_response_gtlsclient_was_receiving(
    tmp_path: Path, require: Callable[[bool, str], None]
) -> None:
    """``quicflow serve APP --handoff PATH --grace 0.01`` taken over by ``--takeover
    PATH`` while gtlsclient receives an ASGI response that cannot move (the application's
    coroutine holds it; /stall/N stops after N chunks): the successor resets that request
    with H3_REQUEST_CANCELLED, gtlsclient receives the RESET_STREAM on its one connection,
    keeps the bytes it had (the body's first ones) and closes with H3_NO_ERROR."""
    require(have_module("starlette"), "starlette not installed (make venv)")
    from quicflow.h3.errors import H3_REQUEST_CANCELLED
    from tests.support.starlette_app import body_of

    chunks = 64
    cert, key = write_certificate(tmp_path)
    path = str(tmp_path / "asgi.sock")
    app = ["serve", "tests.support.starlette_app:app", "--cert", cert, "--key", key,
           "--grace", "0.01"]
    old = H3ServerProc([*app, "--port", "0", "--handoff", path], module="quicflow")
    new: H3ServerProc | None = None
    into = tmp_path / "down"
    into.mkdir()

    async def go() -> tuple[int, str, int]:
        nonlocal new
        loop = asyncio.get_running_loop()
        port = int(old.wait_line("serving ").split(":")[-1].split()[0])
        client = asyncio.ensure_future(ngtcp2.gtlsclient(
            port, [f"https://127.0.0.1:{port}/stall/{chunks}"], f"--download={into}",
            log_path=tmp_path / "gtlsclient.log", timeout=90))
        await loop.run_in_executor(None, old.wait_line, "stalled after ")
        new = H3ServerProc([*app, "--takeover", path], module="quicflow")
        status, log = await client
        old_status, _ = await loop.run_in_executor(None, old.finish)
        return status, log, old_status

    try:
        status, log, old_status = asyncio.run(go())
        assert status == 0, log[-2000:]
        resets = ngtcp2.stream_signals(log, "rx")
        assert [(kind, sid, code) for kind, sid, code in resets] == [
            ("RESET_STREAM", 0, H3_REQUEST_CANCELLED)]
        saved = (into / str(chunks)).read_bytes()
        whole = b"".join(body_of(65536, seed=i) for i in range(chunks))
        assert 0 < len(saved) <= len(whole) and whole.startswith(saved)
        assert log.count(HANDSHAKE_DONE) == 1, "one handshake, before the switch"
        assert ngtcp2.closes(log, "tx") == [H3_NO_ERROR]
        assert old_status == 0
        assert "successor connected: handing off after 1 request(s) in progress " \
               "finish (at most 0.01 s)" in old.seen
        assert "handed off 1 connection(s)" in old.seen
        assert new is not None
        assert new.wait_line("took over ") == f"took over 1 connection(s) from {path}"
        new.proc.terminate()
        assert new.proc.wait(timeout=30) == 0
    finally:
        old.kill()
        if new is not None:
            new.kill()


@pytest.mark.timeout(120)
def test_gtlsclient_concurrent_downloads_survive_takeover_mid_body(tmp_path: Path) -> None:
    """16 requests at once on gtlsclient's one connection, every response stalled mid-body
    when the successor takes over: each continues in the successor, each file whole."""
    n, stall = 16, MB
    sizes = [3 * MB + i for i in range(n)]  # distinct names for --download
    old, new = _servers(tmp_path, stall=stall)
    into = tmp_path / "down"
    into.mkdir()

    async def go() -> tuple[int, str, list[Stall], tuple[int, Any]]:
        loop = asyncio.get_running_loop()
        port = old.port()
        client = asyncio.ensure_future(ngtcp2.gtlsclient(
            port, [f"https://127.0.0.1:{port}/bytes/{size}" for size in sizes],
            f"--download={into}", log_path=tmp_path / "gtlsclient.log", timeout=90))
        stalls = await loop.run_in_executor(None, _stalls, old, n)
        switched = await loop.run_in_executor(None, _take_over, old, new)
        status, log = await client
        return status, log, stalls, switched

    try:
        status, log, stalls, (old_status, doc) = asyncio.run(go())
        assert sorted((sent, size) for sent, size, _, _ in stalls) == [
            (stall, size) for size in sizes], "every response stalled mid-body"
        assert status == 0, log[-2000:]
        ngtcp2.check_downloads(into, {str(size): body_slice(0, size) for size in sizes}, log)
        assert log.count(HANDSHAKE_DONE) == 1
        assert ngtcp2.closes(log, "tx") == [H3_NO_ERROR]
        assert old_status == 0 and doc == {"handed_off_connections": 1}
        assert _successor_endpoint(new)["connections_accepted"] == 0
    finally:
        old.kill()
        new.kill()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("moving", [False, True])
def test_gtlsclient_upload_survives_takeover_mid_body(tmp_path: Path, moving: bool) -> None:
    """gtlsclient uploads 24 MiB (``-d FILE -m POST``); the old process stops reading
    after 4 MiB (flow control holds the rest), the successor takes the body bytes
    received but not read with the connection, reads on and answers the body's length
    and CRC-32. With ``moving``, gtlsclient also moves to a new port (with path
    validation, RFC 9000 §9) 2 s after its handshake, long after the switch (the
    successor reads slowly until it has followed the client).

    Not with ``--nat-rebinding`` (no path validation): gtlsclient then ignores every
    packet still sent to its old port ("ignore packet from unknown path"), so a server
    can follow it only if it sends something after the move; an uploader that waits for
    flow-control credit with nothing in flight sends nothing (ngtcp2 0.12 sends no
    STREAM_DATA_BLOCKED), the credit goes to the old port, and the connection idles out;
    reproduced without any switch, against a plain server that pauses its reads (see
    bench/RESULTS.md, this pass)."""
    import zlib

    size, stall = 24 * MB, 4 * MB
    body = tmp_path / "upload.bin"
    body.write_bytes(os.urandom(size))
    new_extra = ("--after-resume", "path-change") if moving else ()
    old, new = _servers(tmp_path, stall=stall, new_extra=new_extra)
    into = tmp_path / "down"
    into.mkdir()
    options = ["--change-local-addr=2s"] if moving else []

    async def go() -> tuple[int, str, str, tuple[int, Any]]:
        loop = asyncio.get_running_loop()
        port = old.port()
        client = asyncio.ensure_future(ngtcp2.gtlsclient(
            port, [f"https://127.0.0.1:{port}/crc"], f"--data={body}", "--http-method=POST",
            f"--download={into}", *options, log_path=tmp_path / "gtlsclient.log",
            timeout=90))
        line = await loop.run_in_executor(None, old.wait_line, "upload stalled after ")
        switched = await loop.run_in_executor(None, _take_over, old, new)
        status, log = await client
        return status, log, line, switched

    try:
        status, log, line, (old_status, doc) = asyncio.run(go())
        m = re.fullmatch(r"upload stalled after (\d+) bytes in process (\d+) \((.*)\)", line)
        assert m is not None, line
        assert stall <= int(m[1]) < size and int(m[2]) == old.proc.pid, "mid-body"
        assert _counts(m[3]) == {"key-update": 0, "path-change": 0}
        assert status == 0, log[-2000:]
        answer = f"{size} {zlib.crc32(body.read_bytes()):08x}".encode()
        ngtcp2.check_downloads(into, {"crc": answer}, log)
        assert log.count(HANDSHAKE_DONE) == 1
        assert ngtcp2.closes(log, "tx") == [H3_NO_ERROR]
        assert old_status == 0 and doc == {"handed_off_connections": 1}
        if moving:
            assert log.count("Local address is now ") == 1
            followed = new.wait_line("path-change after the switch at ")
            assert "path-change: 1)" in followed, followed
        assert _successor_endpoint(new)["connections_accepted"] == 0
    finally:
        old.kill()
        new.kill()
