"""Same-host takeover of an hq-interop server (issue 7): ``HqServerHandler``'s handoff
hooks and ``quicflow hq server --handoff/--takeover``.

The old server stops in the middle of a response; the successor reopens the file and
continues it at the offset the old one stopped at; a request whose line had only partly
arrived is finished by the successor. The client sees one connection and every byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import quicflow
from quicflow.apps import hq
from tests.support.hq_peers import client_config, server_config
from tests.support.quic_helpers import run

MB = 1 << 20
BIG = 16 * MB
#: the client's receive windows (fixed): the old server can send at most this much of the
#: big file while the client does not read, so the switch lands mid-response
WINDOW = 1 * MB


def _site(tmp_path: Path) -> dict[str, bytes]:
    root = tmp_path / "root"
    root.mkdir()
    files = {"big.bin": os.urandom(BIG), "small.txt": b"small file\n" * 100}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


async def _read_all(reader: quicflow.QuicStreamReader) -> bytes:
    parts = []
    while data := await reader.read(MB):
        parts.append(data)
    return b"".join(parts)


def test_hq_response_and_partial_request_continue_in_the_successor(tmp_path: Path) -> None:
    files = _site(tmp_path)
    root = str(tmp_path / "root")
    path = str(tmp_path / "handoff.sock")

    async def go() -> dict[str, Any]:
        old, old_handler = await hq.start_server("127.0.0.1", 0, root=root,
                                                 configuration=server_config())
        config = client_config(max_data=2 * WINDOW, max_data_window=2 * WINDOW,
                               max_stream_data=WINDOW, max_stream_data_window=WINDOW)
        async with quicflow.connect("127.0.0.1", old.address[1],
                                    configuration=config) as conn:
            first = conn.conn
            big_r, big_w = await conn.create_stream()
            big_w.write(b"GET /big.bin\r\n")
            big_w.write_eof()
            head = await big_r.readexactly(MB // 2)
            # a request line that has only partly arrived when the server is replaced
            part_r, part_w = await conn.create_stream()
            part_w.write(b"GET /sma")
            for _ in range(1000):  # until the old server's handler has read it
                if any(p[0] for p in old.connections[0].app_state["hq"].values()):
                    break
                await asyncio.sleep(0.005)
            handed = old.handoff(path)
            new, new_handler = await hq.start_server("127.0.0.1", 0, root=root,
                                                     configuration=server_config(),
                                                     takeover=path)
            count = await handed
            old_sent = old_handler.stats.bytes_sent
            part_w.write(b"ll.txt\r\n")
            part_w.write_eof()
            rest = await _read_all(big_r)
            small = await _read_all(part_r)
            after = await hq.fetch(conn, "/small.txt")
            same = conn.conn is first and not conn.closed
            accepted = new.stats()["endpoint"]["connections_accepted"]
            new.close()
            old.close()
        return {"count": count, "big": head + rest, "small": small, "after": after,
                "same": same, "accepted": accepted, "old_sent": old_sent,
                "new_sent": new_handler.stats.bytes_sent,
                "new_requests": new_handler.stats.requests}  # fmt: skip

    out = run(go(), timeout=60)
    assert out["count"] == 1
    assert out["same"] and out["accepted"] == 0, "one connection, no new handshake"
    assert hashlib.sha256(out["big"]).digest() == hashlib.sha256(files["big.bin"]).digest()
    assert out["small"] == files["small.txt"]
    assert out["after"] == (len(files["small.txt"]),
                            hashlib.sha256(files["small.txt"]).hexdigest())
    # the switch landed mid-response: each server sent a part, the successor the rest
    assert 0 < out["old_sent"] < BIG
    assert out["old_sent"] + out["new_sent"] == BIG + 2 * len(files["small.txt"])
    assert out["new_requests"] == 3


def test_hq_stream_is_captured_before_its_handler_runs(tmp_path: Path) -> None:
    """A request stream whose handler task has not taken its first step when a handoff
    stops the connection is in the captured state (the successor serves it whole)."""
    handler = hq.HqServerHandler(str(tmp_path))
    connection: Any = SimpleNamespace(app_state={}, conn=SimpleNamespace(streams={}))
    reader: Any = SimpleNamespace(stream_id=4)
    writer: Any = SimpleNamespace(stream_id=4, connection=connection)
    coro = handler(reader, writer)  # the task that would run it has not started
    try:
        assert handler.capture(connection) == {"4": ["", False, 0]}
    finally:
        coro.close()


def test_hq_server_takeover_of_nothing_fails_cleanly(tmp_path: Path) -> None:
    """``quicflow hq server --takeover PATH`` with no server offering at PATH exits 1
    with a line saying why (no traceback)."""
    import subprocess
    import sys

    from tests.support.takeover import ROOT

    done = subprocess.run(
        [sys.executable, "-m", "quicflow.cli.main", "hq", "server", "--root", str(tmp_path),
         "--takeover", str(tmp_path / "nobody.sock")],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"quicflow: takeover failed: no server offers a handoff at {tmp_path / 'nobody.sock'}")
