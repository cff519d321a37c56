"""Same-host takeover (issue 7) under native foreign clients: quic-go's, quinn's,
quiche's (Node binding) and picoquic's (Python 3.12 binding) hq clients download from
``quicflow hq server --handoff`` while a successor (``quicflow hq server --takeover``)
replaces it in the middle of a large file.

Where the switch lands is fixed by counts, not by timing: the peer client stops reading
the large file at ``PAUSE_AT`` bytes (``--pause-at``; picoquic's a chunk later; the old
server is then held by the client's flow-control window, far below the file's size) and
reads on once the test writes a byte to ``--resume-file``. ``resume="after"`` reads on
once the old process has exited (the successor sends everything past the window);
``resume="during"`` reads on as the switch starts, so the old process is sending when it
is stopped and what it had in flight is the successor's to recover; the client stops
again at ``SECOND`` bytes until the switch is over, so however slow the switch, the old
server cannot have sent the whole file.

Every file must arrive whole (SHA-256), the client sees one handshake and closes with
code 0, the old process exits 0 after handing over 1 connection, and the successor
accepts no new handshake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import hq_peers, picoquic, quicgo, quiche, quinn
from tests.support.hq_peers import KB, MB, Site, check_downloads
from tests.support.picoquic import PicoquicProcess
from tests.support.quicgo import QuicGoProcess
from tests.support.quiche import QuicheProcess
from tests.support.quinn import QuinnProcess
from tests.support.takeover import ServerProc

pytestmark = pytest.mark.interop

#: the large file's size per peer: where the client pauses (PAUSE_AT, then SECOND) plus
#: the largest receive window it gives (quic-go: 15 MB for the connection; quiche: 16 MB
#: per stream) is below it, so the old server cannot have sent the whole file by the
#: switch. quiche's (Node) client is the slow one: its file is the smallest that keeps
#: that margin.
BIG = {"quic-go": 48 * MB, "quinn": 48 * MB, "quiche": 24 * MB, "picoquic": 48 * MB}
#: where the client stops reading the big file until the switch is under way
PAUSE_AT = 4 * MB
#: (resume="during") where it stops again until the switch is over
SECOND = {"quic-go": 24 * MB, "quinn": 24 * MB, "quiche": 6 * MB, "picoquic": 24 * MB}
#: quic-go's client also starts a key update every 200 packets (its other peers cannot be
#: told to): the key phase goes through the switch both ways
PEER_ARGS = {"quic-go": ("--key-update", "200")}
PEERS: dict[str, tuple[Any, Any]] = {"quic-go": (quicgo, QuicGoProcess),
                                     "quinn": (quinn, QuinnProcess),
                                     "quiche": (quiche, QuicheProcess),
                                     "picoquic": (picoquic, PicoquicProcess)}  # fmt: skip


def _servers(site: Site, handoff: str) -> tuple[ServerProc, ServerProc]:
    common = ["--root", str(site.root), "--cert", site.cert, "--key", site.key, "--json"]
    old = ServerProc(["--host", "127.0.0.1", "--port", "0", "--handoff", handoff, *common],
                     command=("hq", "server"))
    new = ServerProc(["--takeover", handoff, *common], wait_for_go=True,
                     command=("hq", "server"))
    return old, new


def _take_over(old: ServerProc, new: ServerProc) -> tuple[int, dict[str, Any] | None]:
    new.go()
    status, doc = old.finish()
    new.wait_line("listening on ")
    return status, doc


@pytest.mark.timeout(150)
@pytest.mark.parametrize("resume", ["after", "during"])
@pytest.mark.parametrize("peer", sorted(PEERS))
def test_takeover_mid_download_native_client(tmp_path: Path, peer: str, resume: str,
                                             require: Callable[[bool, str], None]) -> None:
    module, process = PEERS[peer]
    why = module.missing()
    require(why is None, why or "")
    module.build()
    # quiche's BoringSSL takes no self-signed leaf as its own trust anchor: a test CA
    site = hq_peers.make_site(tmp_path, ca_name="quiche" if peer == "quiche" else None)
    size = BIG[peer]
    big = site.add("big.bin", size)
    for i, small in enumerate([0, 1, 1200, 100 * KB]):
        site.add(f"s{i}.bin", small)
    resume_file = tmp_path / "resume"
    resume_file.touch()
    points = [PAUSE_AT] if resume == "after" else [PAUSE_AT, SECOND[peer]]

    def release() -> None:  # the client goes on from its next pause
        with open(resume_file, "ab") as f:
            f.write(b"x")
    old, new = _servers(site, str(tmp_path / "handoff.sock"))

    async def go() -> tuple[list[dict[str, Any]], dict[str, Any],
                            tuple[int, dict[str, Any] | None], int, dict[str, Any]]:
        port = old.port()
        loop = asyncio.get_running_loop()
        async with process("client", "--connect", f"127.0.0.1:{port}", "--ca", site.ca,
                           "--server-name", "localhost", "--out", str(site.out),
                           "--pause-at", ",".join(map(str, points)),
                           "--resume-file", str(resume_file), *PEER_ARGS.get(peer, ()),
                           *site.files) as client:
            paused = await client.next_event("paused", timeout=60)
            if resume == "during":
                release()
            switched = await loop.run_in_executor(None, _take_over, old, new)
            release()
            result = await client.next_event("result", timeout=60)
            await client.next_event("closed", timeout=30)
            rc = await client.wait_exit(30)
            return client.events, paused, switched, rc, result

    try:
        try:
            events, paused, (status, doc), rc, result = asyncio.run(go())
        except BaseException as exc:
            # a rare stall seen once in ~40 loaded runs (picoquic, "during"): keep both
            # servers' own account of the switch with the failure
            exc.add_note(f"old server: {old.seen[-8:]}\nsuccessor: {new.seen[-8:]}")
            raise
        assert paused["path"] == big and PAUSE_AT <= paused["bytes"] < size
        assert [e["k"] for e in events if e["event"] == "paused"] == [1, 2][:len(points)]
        check_downloads(site, [(f["path"], f["bytes"], f["sha256"]) for f in result["files"]])
        assert rc == 0
        assert [e["event"] for e in events].count("handshake") == 1
        # the client closed the connection itself, with code 0 (quinn reports its own
        # close as "local"; picoquic's binding does not say who closed), after every file
        # arrived: the server never ended it
        closed = next(e for e in events if e["event"] == "closed")
        assert closed["how"] in ("application", "local") and closed["code"] == 0
        assert closed.get("remote", False) is False
        if peer == "quic-go":
            assert closed["key_updates_local"] > 0
        assert status == 0 and doc == {"handed_off_connections": 1}
        assert any(line.startswith("handed off 1 connection") for line in old.seen)
        new_status, summary = new.stop()
        assert new_status == 0 and summary is not None
        assert summary["endpoint"]["connections_accepted"] == 0, "no new handshake"
        # the old server was held below the file's size: the successor sent the rest
        assert 0 < summary["bytes_sent"] < size
    finally:
        old.kill()
        new.kill()
