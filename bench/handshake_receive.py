"""The server's receive path per handshake in the sans-I/O core: calls and CPU.

Run: ``.venv/bin/python bench/handshake_receive.py [--handshakes 1000] [--count 200]``

The handshakes of bench/handshake_core.py (client ``Connection`` and server ``Endpoint``
in memory, ALPN ``perf``); only the server's ``Endpoint.receive`` calls are measured,
and within them the TLS layer (``TlsSession.receive``: ClientHello, key exchange,
signature, Finished) and the construction of a new connection (``server_connection``)
apart from the rest — the transport's own receive path (routing, header parsing,
packet opening, frame parsing and dispatch, ACK processing, key installation, transport
parameters). Prints one JSON object:

- ``receive_ms``, ``receive_tls_ms``, ``receive_setup_ms`` and ``receive_rest_ms``:
  ``time.thread_time`` per handshake over ``--handshakes`` handshakes (the timers
  around TLS and set-up are inside the receive timer; their own cost counts there);
- ``receive_calls`` and ``receive_rest_calls``: Python and built-in calls per handshake
  in ``Endpoint.receive``, all of them and those outside TLS and set-up
  (``sys.setprofile`` over ``--count`` further handshakes: deterministic counts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))
sys.path.insert(0, HERE)

import handshake_core  # type: ignore[import-not-found]  # noqa: E402

import quicflow.endpoint.endpoint as endpoint_module  # noqa: E402
from quicflow.endpoint.endpoint import Endpoint  # noqa: E402
from quicflow.tls.session import TlsSession  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--handshakes", type=int, default=1000, help="timed handshakes")
    ap.add_argument("--count", type=int, default=200, help="handshakes with calls counted")
    args = ap.parse_args()

    spent = {"receive": 0.0, "tls": 0.0, "setup": 0.0}
    calls = {"all": 0, "rest": 0}
    inside = [0]  # depth of TLS / set-up frames on the stack while counting
    counting = [False]

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.thread_time() - t0
        return wrapper

    tls_receive = TlsSession.receive
    setup = endpoint_module.__dict__["server_connection"]  # (the name Endpoint calls)
    excluded = {tls_receive.__code__, setup.__code__}

    def profiler(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            calls["all"] += 1
            if inside[0]:
                if frame.f_code in excluded:
                    inside[0] += 1
            else:
                calls["rest"] += 1
                if frame.f_code in excluded:
                    inside[0] = 1
        elif event == "return":
            if inside[0] and frame.f_code in excluded:
                inside[0] -= 1
        elif event == "c_call" and arg is not sys.setprofile:
            calls["all"] += 1
            if not inside[0]:
                calls["rest"] += 1

    receive = Endpoint.receive

    def measured_receive(self: Endpoint, *a: Any, **k: Any) -> Any:
        if counting[0]:
            sys.setprofile(profiler)
            try:
                return receive(self, *a, **k)
            finally:
                sys.setprofile(None)
        t0 = time.thread_time()
        try:
            return receive(self, *a, **k)
        finally:
            spent["receive"] += time.thread_time() - t0

    Endpoint.receive = measured_receive  # type: ignore[method-assign]
    TlsSession.receive = timed("tls", tls_receive)  # type: ignore[method-assign]

    server, client_cfg = handshake_core.server_and_client_config()
    clock = [0.0]
    for _ in range(50):  # imports, caches
        handshake_core.handshake(server, client_cfg, 1.0, 9999, clock, keep=False)
    # counted: TLS and set-up plain (their code objects mark them on the stack)
    TlsSession.receive = tls_receive  # type: ignore[method-assign]
    counting[0] = True
    for _ in range(args.count):
        handshake_core.handshake(server, client_cfg, 1.0, 9999, clock, keep=False)
    counting[0] = False
    TlsSession.receive = timed("tls", tls_receive)  # type: ignore[method-assign]
    endpoint_module.__dict__["server_connection"] = timed("setup", setup)
    for key_ in spent:
        spent[key_] = 0.0
    for _ in range(args.handshakes):
        handshake_core.handshake(server, client_cfg, 1.0, 9999, clock, keep=False)
    n = args.handshakes
    print(json.dumps({
        "handshakes": n,
        "receive_ms": round(spent["receive"] * 1000 / n, 4),
        "receive_tls_ms": round(spent["tls"] * 1000 / n, 4),
        "receive_setup_ms": round(spent["setup"] * 1000 / n, 4),
        "receive_rest_ms": round((spent["receive"] - spent["tls"] - spent["setup"]) * 1000 / n,
                                 4),
        "receive_calls": round(calls["all"] / args.count, 1),
        "receive_rest_calls": round(calls["rest"] / args.count, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
