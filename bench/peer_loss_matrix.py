"""Interop under loss and tight limits: foreign peers x role x loss profile x limits.

Each cell is one connection between quicflow and a foreign stack through the lossy relay
(tests/support/relay.py, bursts of loss included), every byte checked by SHA-256,
with a timeout. hq-interop peers (quic-go, quinn, quiche, picoquic) download files; the
echo peers (aioquic, qh3) upload and download on several streams at once.

    PYTHONPATH=src python -m bench.peer_loss_matrix [--peers quicgo,aioquic] \\
        [--roles qf-client] [--profiles rand5,burst] [--limits tight] [--out m.json]

Limits ("tight") apply to quicflow: small connection and stream receive windows that do
not grow (quicflow receives the downloads as client, the uploads as server), and a low
max_streams_bidi as server (the peer's client opens more streams than that). Progress
lines go to stderr, one JSON object per cell to --out. A failed cell keeps quicflow's
qlog and keylog under --keep (default /tmp/peerloss-fail/<cell>).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import quicflow
from quicflow.aio.stats import connection_stats
from tests.support import echo_proto, hq_peers
from tests.support.aioquic_peer import AioquicProcess
from tests.support.quic_helpers import ca, client_config, issued, run, server_config
from tests.support.relay import Direction, LossyUdpRelay

KB, MB = 1024, 1024 * 1024

PROFILES: dict[str, dict[str, Any]] = {
    "none": {},
    "rand5": {"loss": 0.05, "reorder": 0.05},
    "rand20": {"loss": 0.20, "reorder": 0.05},
    "burst": {"burst": (0.005, 5, 60)},  # with p=0.5 % a datagram starts 5..60 ms of drops
    "reorder": {"reorder": 0.30},
}
TIGHT = {"max_data": 32 * KB, "max_data_window": 32 * KB, "max_stream_data": 16 * KB,
         "max_stream_data_window": 16 * KB, "max_streams_bidi": 4}  # fmt: skip
LIMITS: dict[str, dict[str, Any]] = {"default": {}, "tight": TIGHT, "peer-tight": {}}
#: "peer-tight" (echo peers only): the peer's receive windows are small, quicflow sends
PEER_TIGHT = ("--max-data", str(48 * KB), "--max-stream-data", str(16 * KB))

HQ_PEERS = ["quicgo", "quinn", "quiche", "picoquic"]
#: clients that fail instead of waiting for MAX_STREAMS when the server's stream limit is
#: reached (qh3: "Bidirectional stream limit 4 exceeded"; @matrixai/quic over quiche:
#: ErrorQUICStreamLimit): quicflow's server keeps the default max_streams_bidi with them
NO_STREAM_WAIT = {"qh3", "quiche"}
ECHO_PEERS = ["aioquic", "qh3"]


class TracedRelay(LossyUdpRelay):
    """The relay (its loss, reordering and bursts) keeping what it did with each
    datagram, for the trace kept with a failed run."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.trace: list[tuple[float, str, int, str]] = []  # (time, direction, bytes, what)

    def _relay(self, d: Direction, data: bytes) -> None:
        before = (d.dropped, d.forwarded)
        super()._relay(d, data)
        what = "drop" if d.dropped != before[0] else "fwd" if d.forwarded != before[1] else "hold"
        self.trace.append((time.monotonic(), d.name, len(data), what))


RELAYS: list[TracedRelay] = []


def make_relay(profile: dict[str, Any], seed: int) -> Any:
    def factory(addr: Any, **_: Any) -> TracedRelay:
        kw = {k: v for k, v in profile.items() if k != "burst"}
        if "burst" in profile:
            p, lo, hi = profile["burst"]
            kw.update(burst=p, burst_ms=(lo, hi))
        r = TracedRelay(addr, seed=seed, **kw)
        RELAYS.append(r)
        return r

    return factory


def peer_class(name: str) -> Any:
    if name == "quicgo":
        from tests.support.quicgo import QuicGoProcess, build

        build()
        return QuicGoProcess
    if name == "quinn":
        from tests.support.quinn import QuinnProcess, build

        build()
        return QuinnProcess
    if name == "quiche":
        from tests.support.quiche import QuicheProcess, build

        build()
        return QuicheProcess
    if name == "picoquic":
        from tests.support.picoquic import PicoquicProcess, build

        build()
        return PicoquicProcess
    raise ValueError(name)


def peer_missing(name: str) -> str | None:
    import importlib
    import importlib.util

    if name in ECHO_PEERS:
        return None if importlib.util.find_spec(name) else f"{name} not installed"
    mod = importlib.import_module(f"tests.support.{name}")
    why: str | None = mod.missing()
    return why


# ------------------------------------------------------------------------- hq cells

FACES: list[quicflow.QuicConnection] = []


def _view(face: quicflow.QuicConnection) -> dict[str, Any]:
    FACES.append(face)
    return {}


def hq_cell(peer: str, role: str, limits: dict[str, Any], tmp: Path, qlog: Path,
            timeout: float) -> dict[str, Any]:  # fmt: skip
    site = hq_peers.make_site(tmp, ca_name="quiche" if peer == "quiche" else None)
    for i, size in enumerate([0, 1, 1200, 40 * KB, 300 * KB, 1 * MB]):
        site.add(f"f{i}.bin", size)
    if limits:  # more streams than the server's limit when quicflow serves
        for i in range(12):
            site.add(f"s{i}.bin", 5 * KB + 997 * i)
    cfg = dict(limits)
    if role == "qf-client" or peer in NO_STREAM_WAIT:
        cfg.pop("max_streams_bidi", None)
    cfg.update(qlog_dir=str(qlog), keylog_file=str(qlog / "keylog.txt"))
    out = hq_peers.exchange(peer_class(peer), role, site, timeout=timeout, loss=1.0, **cfg)
    return {"peer_closed": {k: out.peer.get(k) for k in ("how", "remote", "code")},
            "quicflow_close": None if out.close is None else
            [out.close.by_peer, out.close.application, out.close.error_code]}  # fmt: skip


# ----------------------------------------------------------------------- echo cells

ECHO_STREAMS = [(0, 300 * KB), (200 * KB, 0), (50 * KB, 50 * KB), (600 * KB, 100 * KB),
                (10 * KB, 700 * KB), (0, 0), (1, 1)]  # fmt: skip


async def echo_as_client(peer: str, relay_factory: Any, limits: dict[str, Any], tmp: Path,
                         qlog: Path, peer_args: tuple[str, ...]) -> dict[str, Any]:  # fmt: skip
    authority = ca("peerloss")
    cert, key = issued("peerloss", "localhost").write(tmp, "server")
    cfg = {k: v for k, v in limits.items() if k != "max_streams_bidi"}
    async with AioquicProcess("server", "--cert", cert, "--key", key, *peer_args,
                              library=peer) as p:  # fmt: skip
        assert p.port is not None
        relay = await relay_factory(("127.0.0.1", p.port)).start()
        try:
            config = client_config(cadata=authority.cert_pem, qlog_dir=str(qlog),
                                   keylog_file=str(qlog / "keylog.txt"), **cfg)  # fmt: skip
            async with quicflow.connect("127.0.0.1", relay.address[1],
                                        configuration=config) as conn:  # fmt: skip
                FACES.append(conn)

                async def one(i: int, up: int, down: int) -> dict[str, object]:
                    reader, writer = await conn.create_stream()
                    data = echo_proto.payload(5_000 + i, up)
                    return await echo_proto.client_exchange(reader, writer, upload=data,
                                                            download=down, seed=i)  # fmt: skip

                results = await asyncio.gather(*(one(i, u, d) for i, (u, d)
                                                 in enumerate(ECHO_STREAMS)))  # fmt: skip
            bad = [r for r in results if not r["ok"]]
            assert not bad, f"corrupt/truncated streams: {bad}"
            term = await p.next_event("terminated", timeout=15)
            errors = [ev for ev in p.events if ev["event"] == "stream_error"]
            assert not errors, errors
        finally:
            await relay.close()
    return {"peer_terminated": term}


async def echo_as_server(peer: str, relay_factory: Any, limits: dict[str, Any], tmp: Path,
                         qlog: Path, timeout: float,
                         peer_args: tuple[str, ...]) -> dict[str, Any]:  # fmt: skip
    authority = ca("peerloss")
    cafile, _ = authority.write(tmp, "ca")
    accepted: list[quicflow.QuicConnection] = []
    server = await quicflow.serve(
        echo_proto.serve_stream, "127.0.0.1", 0,
        configuration=server_config(issued("peerloss", "localhost"), qlog_dir=str(qlog),
                                    keylog_file=str(qlog / "keylog.txt"), idle_timeout=5.0,
                                    **limits),
        connection_handler=accepted.append)  # fmt: skip
    try:
        relay = await relay_factory(server.address).start()
        try:
            async with AioquicProcess("client", "--port", str(relay.address[1]), "--cafile",
                                      cafile, "--server-name", "localhost", "--streams", "12",
                                      "--upload", str(150 * KB), "--download", str(120 * KB),
                                      "--timeout", str(timeout - 10), *peer_args,
                                      library=peer) as p:  # fmt: skip
                rc = await p.wait_exit(timeout)
                errs = [ev for ev in p.events if ev["event"] == "error"]
                assert not errs and rc == 0, f"{peer} client failed rc={rc}: {errs}"
                result = await p.next_event("result", timeout=1)
                assert result["ok"], result
        finally:
            await relay.close()
        assert len(accepted) == 1
        FACES.extend(accepted)
        await asyncio.wait_for(accepted[0].wait_closed(), 15)
        leaked = len(server.runner.faces)
        assert leaked == 0, f"{leaked} connections left on the server"
        close = None
        try:
            accepted[0].raise_if_closed()
        except quicflow.ConnectionClosedError as e:
            close = [e.by_peer, e.application, e.error_code]
    finally:
        server.close()
    return {"quicflow_close": close}


# ----------------------------------------------------------------------------- driver


def run_cell(peer: str, role: str, profile: str, limits: str, seed: int,
             timeout: float, keep: Path) -> dict[str, Any]:  # fmt: skip
    name = f"{peer}-{role}-{profile}-{limits}-s{seed}"
    tmp = Path(tempfile.mkdtemp(prefix="peerloss-"))
    qlog = tmp / "qlog"
    qlog.mkdir()
    RELAYS.clear()
    FACES.clear()
    factory = make_relay(PROFILES[profile], seed)
    lim = LIMITS[limits]
    if role == "qf-server" and peer in NO_STREAM_WAIT:
        lim = {k: v for k, v in lim.items() if k != "max_streams_bidi"}
    pargs = PEER_TIGHT if limits == "peer-tight" else ()
    rec: dict[str, Any] = {"cell": name, "peer": peer, "role": role, "profile": profile,
                           "limits": limits, "seed": seed}  # fmt: skip
    t0 = time.monotonic()
    try:
        if peer in HQ_PEERS:
            hq_peers.LossyUdpRelay = factory  # type: ignore[attr-defined]
            hq_peers._quicflow_view = _view
            rec.update(hq_cell(peer, role, lim, tmp, qlog, timeout))
        elif role == "qf-client":
            rec.update(run(echo_as_client(peer, factory, lim, tmp, qlog, pargs),
                                    timeout))  # fmt: skip
        else:
            rec.update(run(echo_as_server(peer, factory, lim, tmp, qlog, timeout,
                                                   pargs), timeout + 20))  # fmt: skip
        rec["ok"] = True
    except BaseException as exc:  # noqa: BLE001 - every failure is a result here
        if isinstance(exc, KeyboardInterrupt):
            raise
        rec["ok"] = False
        rec["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        rec["trace"] = traceback.format_exc()[-3000:]
    rec["seconds"] = round(time.monotonic() - t0, 2)
    if RELAYS:
        rec["relay"] = RELAYS[0].stats()
    if FACES:
        c = connection_stats(FACES[0].conn)
        rec["quicflow"] = {k: c.get(k) for k in (
            "packets_sent", "packets_received", "packets_lost", "duplicate_packets",
            "data_blocked_received", "data_blocked_grew", "dropped_reassembly_full")}
        try:
            dp = FACES[0].stats()["datapath"]
            rec["datapath"] = {k: v for k, v in dp.items() if not isinstance(v, float)}
        except Exception as exc:  # noqa: BLE001 - the socket may be gone
            rec["datapath"] = repr(exc)
    if rec["ok"]:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        dest = keep / name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(tmp, dest)
        if RELAYS:
            with open(dest / "relay-trace.txt", "w") as f:
                for t, name, size, what in RELAYS[0].trace:
                    f.write(f"{t:.6f} {name} {size} {what}\n")
        shutil.rmtree(tmp, ignore_errors=True)
        rec["kept"] = str(dest)
    return rec


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", default=",".join(HQ_PEERS + ECHO_PEERS))
    ap.add_argument("--roles", default="qf-client,qf-server")
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--limits", default=",".join(LIMITS))
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--timeout", type=float, default=90.0)
    ap.add_argument("--out", default="/tmp/peerloss-matrix.jsonl")
    ap.add_argument("--keep", default="/tmp/peerloss-fail")
    a = ap.parse_args()
    keep = Path(a.keep)
    keep.mkdir(parents=True, exist_ok=True)
    fails = 0
    with open(a.out, "a") as out:
        for peer in a.peers.split(","):
            why = peer_missing(peer)
            if why:
                print(f"SKIP {peer}: {why}", file=sys.stderr, flush=True)
                continue
            for role in a.roles.split(","):
                for limits in a.limits.split(","):
                    if limits == "peer-tight" and peer not in ECHO_PEERS:
                        continue
                    for profile in a.profiles.split(","):
                        for seed in (int(s) for s in a.seeds.split(",")):
                            rec = run_cell(peer, role, profile, limits, seed, a.timeout, keep)
                            out.write(json.dumps(rec) + "\n")
                            out.flush()
                            fails += not rec["ok"]
                            lost = rec.get("quicflow", {}).get("packets_lost")
                            print(f"{time.strftime('%H:%M:%S', time.gmtime())} "
                                  f"{'ok  ' if rec['ok'] else 'FAIL'} {rec['cell']:<45} "
                                  f"{rec['seconds']:6.1f}s lost={lost} "
                                  f"{rec.get('error', '')[:300]}",
                                  file=sys.stderr, flush=True)  # fmt: skip
    sys.stderr.write(f"failures: {fails}\n")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
