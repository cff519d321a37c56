"""A connection of a native foreign client moves to another host behind the nftables
QUIC-LB balancer, by CID (issue 7, item 4b), with ``quicflow hq server`` on both hosts.

As in tests/test_migrate_quiclb.py (namespaces of tests/support/lbnet.py; new
connections go to host A): ``quicflow hq migrate --mode cids`` (with ``"during"``, the
same request sent from the test) moves the connection to B in the middle of a large
file; A adds B's CIDs to it with a Retire Prior To for its own right before the
capture, B restores it and announces them. The client must honour Retire Prior To
(RFC 9000 §5.1.2) and switch to B's CIDs, which the balancer routes to B.

Where the move lands is fixed by counts: the client stops reading at ``PAUSE_AT``
(``--pause-at``; A is then held by its flow-control window, far below the file's size)
and reads on (a byte written to ``--resume-file``) after the move (``resume="after"``)
or as it starts (``"during"``: A is sending, and what reaches A after the capture is
forwarded to B); then it stops again at ``SECOND`` until the move is over, so however
slow the move, A cannot have sent the whole file. Needs root (``ip netns``) and nft.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quicflow.migration.handoff import request_move
from tests.support import picoquic, quicgo, quiche, quinn
from tests.support.hq_peers import KB, MB, check_downloads, make_site
from tests.support.lbnet import VIP, lb_net
from tests.support.netns import exec_argv
from tests.support.picoquic import PicoquicProcess
from tests.support.prereq import have_binary, is_root
from tests.support.quicgo import QuicGoProcess
from tests.support.quiche import QuicheProcess
from tests.support.quinn import QuinnProcess
from tests.support.takeover import ROOT
from tests.test_migrate_hosts import _pki
from tests.test_migrate_quiclb import PORT, start_hosts

pytestmark = [pytest.mark.interop, pytest.mark.netns]

#: the large file, where the client pauses, where it pauses again (resume="during"):
#: SECOND + the largest window a client gives (quic-go: 15 MB; quiche: 16 MB per
#: stream) < BIG. quiche's (Node) client is slow: a smaller file keeps its case short.
BIG = {"quic-go": 64 * MB, "quinn": 64 * MB, "quiche": 24 * MB, "picoquic": 64 * MB}
PAUSE_AT = 4 * MB
SECOND = {"quic-go": 40 * MB, "quinn": 40 * MB, "quiche": 6 * MB, "picoquic": 40 * MB}
PEERS: dict[str, tuple[Any, Any]] = {"quic-go": (quicgo, QuicGoProcess),
                                     "quinn": (quinn, QuinnProcess),
                                     "quiche": (quiche, QuicheProcess),
                                     "picoquic": (picoquic, PicoquicProcess)}  # fmt: skip


def _client_argv(peer: str, built: Path) -> tuple[list[str], dict[str, str] | None]:
    """The peer's client program (what its Process class runs) and its environment."""
    if peer == "quiche":  # built: the node_modules directory
        return ["node", str(quiche.PEER)], {**os.environ, "QUICHE_PEER_MODULES": str(built)}
    if peer == "picoquic":  # built: the venv's interpreter
        return [str(built), str(picoquic.PEER)], None
    return [str(built)], None


def _move(tmp_path: Path, pki: dict[str, str], to: str, command: bool) -> dict[str, Any]:
    """``quicflow hq migrate --mode cids --handoff A --to B`` (``command``), or the same
    request from this process (no interpreter to start: the move begins at once)."""
    request = {"to": to, "cert": pki["a_cert"], "key": pki["a_key"], "ca": pki["ca"],
               "server_name": "localhost", "count": None, "mode": "cids",
               "forward_seconds": 10.0}  # fmt: skip
    if not command:
        return request_move(str(tmp_path / "a.sock"), request)
    done = subprocess.run(
        [sys.executable, "-m", "quicflow.cli.main", "hq", "migrate",
         "--handoff", str(tmp_path / "a.sock"), "--to", to,
         "--cert", pki["a_cert"], "--key", pki["a_key"], "--ca", pki["ca"],
         "--server-name", "localhost", "--mode", "cids", "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return {"moved": json.loads(done.stdout)["moved_connections"]}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("resume", ["after", "during"])
@pytest.mark.parametrize("peer", sorted(PEERS))
def test_native_client_follows_its_connection_to_another_host_by_cid(
        tmp_path: Path, peer: str, resume: str, require: Callable[[bool, str], None]) -> None:
    require(is_root(), "needs root for network namespaces (run the tests as root, as CI does)")
    require(have_binary("ip") and have_binary("nft"), "programs ip and nft needed")
    module, process = PEERS[peer]
    why = module.missing()
    require(why is None, why or "")
    program, env = _client_argv(peer, module.build())
    # quiche's BoringSSL takes no self-signed leaf as its own trust anchor: a test CA
    # (in a directory of its own: _pki writes the migration CA to tmp_path/ca.pem)
    (tmp_path / "site").mkdir()
    site = make_site(tmp_path / "site", ca_name="quiche" if peer == "quiche" else None)
    size = BIG[peer]
    big = site.add("big.bin", size)
    for i, small in enumerate([0, 1200, 100 * KB]):
        site.add(f"s{i}.bin", small)
    pki = _pki(tmp_path)
    resume_file = tmp_path / "resume"
    resume_file.touch()
    points = [PAUSE_AT] if resume == "after" else [PAUSE_AT, SECOND[peer]]

    def release() -> None:  # the client goes on from its next pause
        with open(resume_file, "ab") as f:
            f.write(b"x")
    with lb_net() as net:
        net.load_ruleset(PORT, new_connections_to_host1=True)
        a, b = start_hosts(net, tmp_path, pki, command=("hq", "server"),
                           extra=("--root", str(site.root)), credential=(site.cert, site.key))

        async def run() -> tuple[list[dict[str, Any]], dict[str, Any]]:
            loop = asyncio.get_running_loop()
            client = process("client")
            await client._spawn(*exec_argv(net.client, [
                *program, "client", "--connect", f"{VIP}:{PORT}", "--ca", site.ca,
                "--server-name", "localhost", "--out", str(site.out),
                "--pause-at", ",".join(map(str, points)), "--resume-file", str(resume_file),
                *site.files]), env=env)  # fmt: skip
            try:
                await client.next_event("paused", timeout=60)
                if resume == "during":
                    release()
                moved = await loop.run_in_executor(None, _move, tmp_path, pki,
                                                   f"{net.host_ips[1]}:7444",
                                                   resume == "after")
                release()
                await client.next_event("result", timeout=60)
                await client.next_event("closed", timeout=30)
                assert await client.wait_exit(30) == 0
                return client.events, moved
            finally:
                await client.stop()

        try:
            events, moved = asyncio.run(run())
            status_b, summary_b = b.stop()
            status_a, summary_a = a.stop()
        finally:
            a.kill()
            b.kill()
    assert moved.get("moved") == 1, moved
    paused = next(e for e in events if e["event"] == "paused")
    assert paused["path"] == big and PAUSE_AT <= paused["bytes"] < size  # (picoquic: +1 chunk)
    assert [e["k"] for e in events if e["event"] == "paused"] == [1, 2][:len(points)]
    result = next(e for e in events if e["event"] == "result")
    check_downloads(site, [(f["path"], f["bytes"], f["sha256"]) for f in result["files"]])
    assert [e["event"] for e in events].count("handshake") == 1
    closed = next(e for e in events if e["event"] == "closed")
    assert closed["how"] in ("application", "local") and closed["code"] == 0
    assert status_a == status_b == 0 and summary_a is not None and summary_b is not None
    endpoint_a, endpoint_b = summary_a["endpoint"], summary_b["endpoint"]
    assert endpoint_b["connections_accepted"] == 0, "no new handshake on B"
    # B sent the rest of the big file, and the client's datagrams reached B through the
    # balancer (new connections all go to A: only B's server ID in a CID routes to B)
    assert 0 < summary_b["bytes_sent"] < size
    assert endpoint_b["datagrams_received"] > 0, "the client never used B's CIDs"
    assert not any("Traceback" in line for line in a.seen + b.seen), b.seen
    assert endpoint_a["dropped_moved"] == 0
    assert endpoint_b["forwarded_received"] == endpoint_a["forwarded_moved"]
