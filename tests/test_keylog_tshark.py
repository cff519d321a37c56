"""tshark decodes a loopback capture of a quicflow transfer with the key log that
``$SSLKEYLOGFILE`` names: 1-RTT STREAM frames decrypted, no malformed packet.

Both ends are ``quicflow hq`` processes with ``--backend basic``: with GSO a capture on
the sending host shows each batch as one large UDP datagram (segmentation happens after
the capture point), which no dissector can split into QUIC packets. Root is needed to
capture (CI runs as root).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.prereq import have_binary, is_root
from tests.test_hq import hq_client, start_cli_server, stop_cli_server

SIZE = 400 * 1024


def _tshark(*args: str) -> str:
    r = subprocess.run(["tshark", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


class Capture:
    """tshark capturing UDP port ``port`` on ``lo`` into ``path`` until stopped."""

    def __init__(self, path: Path, port: int) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            ["tshark", "-i", "lo", "-B", "32", "-f", f"udp port {port}", "-w", str(path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.proc.stderr is not None
        seen = []
        for line in self.proc.stderr:  # "Capturing on 'Loopback: lo'" once it runs
            seen.append(line)
            if line.startswith("Capturing on"):
                break
        else:
            raise AssertionError(f"tshark did not start capturing: {seen}")

    def stop(self) -> str:
        # dumpcap writes what it has read when interrupted: give it the time to read the
        # last packets (until the file has stopped growing for a second, 15 s at most)
        size, still_since, deadline = -1, time.monotonic(), time.monotonic() + 15
        while time.monotonic() < deadline and time.monotonic() - still_since < 1.0:
            time.sleep(0.1)
            now_size = self.path.stat().st_size if self.path.exists() else 0
            if now_size != size:
                size, still_since = now_size, time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=30)
        return err


@pytest.mark.parametrize("side", ["client", "server"])
def test_tshark_decrypts_capture_with_sslkeylogfile(
    tmp_path: Path, side: str, free_udp_port: int, require: Callable[[bool, str], None]
) -> None:
    require(have_binary("tshark"), "program 'tshark' not found (Debian package tshark; "
                                   "make deps)")  # fmt: skip
    require(is_root(), "capturing on lo needs root")
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(SIZE)
    (root / "f.bin").write_bytes(data)
    keys = tmp_path / "keys.log"
    env = dict(os.environ, SSLKEYLOGFILE=str(keys))
    capture = Capture(tmp_path / "cap.pcapng", free_udp_port)
    server = start_cli_server(root, "--backend", "basic", "--port", str(free_udp_port),
                              env=env if side == "server" else None)  # fmt: skip
    try:
        r = hq_client(f"https://localhost:{free_udp_port}/f.bin", "--output", str(tmp_path),
                      "--cafile", server.cafile, "--backend", "basic", "-q",
                      env=env if side == "client" else None)  # fmt: skip
        assert r.returncode == 0, r.stderr
    finally:
        stop_cli_server(server)
        stats = capture.stop()
    assert hashlib.sha256((tmp_path / "f.bin").read_bytes()).digest() == \
        hashlib.sha256(data).digest()
    assert "dropped" not in stats.replace("0 packets dropped", ""), stats
    assert len(keys.read_text().splitlines()) == 4
    cap = str(capture.path)
    keylog = f"tls.keylog_file:{keys}"
    total = _tshark("-r", cap, "-T", "fields", "-e", "frame.number").split()
    assert len(total) > SIZE // 1452  # datagrams of up to 1452 bytes (pmtud default)
    bad = _tshark("-r", cap, "-o", keylog, "-T", "fields", "-e", "frame.number", "-Y",
                  "_ws.malformed || quic.decryption_failed").split()  # fmt: skip
    detail = ""
    if bad:  # say what they were (one such packet seen once in ~10 loaded suite runs)
        detail = _tshark("-r", cap, "-o", keylog, "-V", "-Y",
                         " || ".join(f"frame.number == {n}" for n in bad[:3]))[-4000:]
    assert bad == [], f"malformed or undecryptable packets: {bad[:20]}\n{detail}"
    # 1-RTT (short header) packets with STREAM frames, decrypted: the file's stream data
    rows = _tshark("-r", cap, "-o", keylog, "-T", "fields", "-E", "occurrence=a",
                   "-e", "quic.stream.stream_id", "-e", "quic.stream.length",
                   "-Y", "quic.header_form == 0 && quic.stream.stream_id == 0").splitlines()
    assert len(rows) > SIZE // 1452
    stream0 = 0
    for row in rows:
        ids, lengths = row.split("\t")
        for sid, length in zip(ids.split(","), lengths.split(","), strict=True):
            if sid == "0":
                stream0 += int(length)
    # the request (GET /f.bin CRLF, 12 bytes) plus the whole file, at least once
    assert stream0 >= SIZE + 12
    # without the key log nothing of 1-RTT decrypts
    plain = _tshark("-r", cap, "-Y", "quic.stream.stream_id", "-T", "fields",
                    "-e", "frame.number").split()  # fmt: skip
    assert plain == []
