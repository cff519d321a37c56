"""Per-connection state built by the inline constructors (transport/inline.py) is the same
plain data the classes' own constructors give, and nothing mutable is shared."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from quicflow.transport.inline import Arg, Inline, inline_init
from quicflow.transport.rangeset import RangeSet
from quicflow.transport.startup import new_spaces
from quicflow.transport.state import PacketSpace, initial_crypto_recv
from quicflow.transport.streams import RecvStream, SendStream


def _dump(obj: Any) -> Any:
    """Every field, recursively, with the classes: what a snapshot would capture."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return (type(obj).__name__,
                tuple((f.name, _dump(getattr(obj, f.name))) for f in dataclasses.fields(obj)))
    if isinstance(obj, list):
        return ["list", *(_dump(x) for x in obj)]
    if isinstance(obj, dict):
        return ("dict", tuple(sorted((k, _dump(v)) for k, v in obj.items())))
    return obj


def _mutables(obj: Any, out: list[Any]) -> list[Any]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out.append(obj)
        for f in dataclasses.fields(obj):
            _mutables(getattr(obj, f.name), out)
    elif isinstance(obj, (list, dict, bytearray)):
        out.append(obj)
        for x in obj.values() if isinstance(obj, dict) else obj:
            _mutables(x, out)
    return out


def test_new_spaces_equal_the_plain_constructors() -> None:
    plain = [PacketSpace(crypto_recv=initial_crypto_recv()), PacketSpace(), PacketSpace()]
    made = new_spaces()
    assert _dump(made) == _dump(plain)
    assert made[0].crypto_recv is not None and made[0].crypto_recv.window == 1 << 16
    assert made[1].crypto_send is not None and made[1].crypto_send.max_data == 1 << 62


def test_new_spaces_share_nothing_mutable() -> None:
    a, b = new_spaces(), new_spaces()
    ids_a = {id(o) for o in _mutables(a, [])}
    ids_b = {id(o) for o in _mutables(b, [])}
    assert not ids_a & ids_b
    a[2].received.add(0, 5)
    a[2].ecn_counts[1] += 1
    assert a[2].crypto_send is not None
    a[2].crypto_send.write(b"ticket")
    assert _dump(b[2]) == _dump(PacketSpace())
    assert _dump(a[1]) == _dump(PacketSpace())  # nor within one connection


def test_inline_init_given_values_and_errors() -> None:
    make = inline_init(SendStream, max_data=7, acked=Inline(RangeSet, starts=[1], ends=[2]))
    s = make()
    assert _dump(s) == _dump(SendStream(max_data=7, acked=RangeSet([1], [2])))
    t = make()
    assert s.acked.starts is not t.acked.starts  # a given list is copied per call
    with pytest.raises(TypeError, match="no field"):
        inline_init(RecvStream, windw=3)


def test_new_connection_equals_the_dataclass_constructor() -> None:
    from quicflow.crypto.offload import SoftwareOffloadEngine
    from quicflow.transport.config import Configuration
    from quicflow.transport.connection import Connection
    from quicflow.transport.factory import _new_connection
    from quicflow.transport.path import set_pacing
    from quicflow.transport.startup import new_recovery

    cfg = Configuration(alpn_protocols=["hq-interop"])
    engine = SoftwareOffloadEngine()
    for is_client in (True, False):
        made = _new_connection(cfg, is_client, ("127.0.0.1", 4433), b"\x01" * 8, 5.0,
                               engine, None, b"k" * 8)
        loss, pacer, pmtud = new_recovery(cfg, is_client)
        plain = Connection(
            configuration=cfg, is_client=is_client, now_created=5.0,
            original_dcid=b"\x01" * 8, peer_address=("127.0.0.1", 4433),
            local_cid_length=cfg.connection_id_length, engine=engine, seal_key=b"k" * 8,
            cid_issuer=None, loss=loss, pacer=pacer, pmtud=pmtud,
        )
        plain._now_hint = 5.0
        set_pacing(plain)  # (as the factory does: a loopback path is not paced)
        if not is_client:  # a server makes its 1-RTT CRYPTO receive stream on demand
            assert made.spaces[2].crypto_recv is None
            plain.spaces[2].crypto_recv = None
        skip = {"loss", "pacer", "pmtud", "configuration", "engine"}  # given, not made
        for f in dataclasses.fields(Connection):
            if f.name not in skip:
                assert _dump(getattr(made, f.name)) == _dump(getattr(plain, f.name)), f.name
        assert _dump(made.loss) == _dump(plain.loss) and _dump(made.pmtud) == _dump(plain.pmtud)
        assert _dump(made.pacer) == _dump(plain.pacer)
        assert made.configuration is cfg and made.engine is engine
        other = _new_connection(cfg, is_client, ("127.0.0.1", 4433), b"\x01" * 8, 5.0,
                                engine, None, b"j" * 8)
        shared = {id(o) for o in _mutables([getattr(made, f.name) for f in
                                            dataclasses.fields(Connection)
                                            if f.name not in skip], [])}
        assert not shared & {id(o) for o in _mutables(
            [getattr(other, f.name) for f in dataclasses.fields(Connection)
             if f.name not in skip], [])}


def test_new_recovery_equals_the_dataclass_constructors() -> None:
    from quicflow.transport.config import Configuration
    from quicflow.transport.congestion import CongestionControl, Pacer
    from quicflow.transport.pmtud import new_pmtud
    from quicflow.transport.recovery import LossDetection
    from quicflow.transport.startup import new_recovery

    for algorithm in ("cubic", "newreno"):
        for pmtud in (True, False):
            cfg = Configuration(alpn_protocols=["x"], congestion_control=algorithm,
                                max_pto_period=2.5, pmtud=pmtud)
            for is_client in (True, False):
                loss, pacer, made_pmtud = new_recovery(cfg, is_client)
                plain = LossDetection(is_server=not is_client, max_ack_delay=0.025,
                                      cc=CongestionControl(algorithm=algorithm),
                                      max_pto_period=2.5)
                assert _dump(loss) == _dump(plain)
                assert loss.cc.cwnd == 12000  # (RFC 9002 §7.2 at 1200 bytes)
                assert _dump(pacer) == _dump(Pacer(
                    burst_interval=0.002, max_burst_datagrams=256, granularity=0.001,
                    run_datagrams=256))
                assert _dump(made_pmtud) == _dump(new_pmtud(pmtud))
                again = new_recovery(cfg, is_client)
                assert not {id(o) for o in _mutables([loss, pacer, made_pmtud], [])} & {
                    id(o) for o in _mutables(list(again), [])}


def test_unknown_congestion_control_refused_by_every_constructor() -> None:
    """The controller made inline skips CongestionControl.__post_init__: its check on
    the algorithm is made by the constructors (the same ValueError)."""
    from quicflow.transport.config import Configuration
    from quicflow.transport.factory import client_connection, server_connection
    from quicflow.transport.startup import new_recovery

    cfg = Configuration(alpn_protocols=["x"], congestion_control="bbr")
    with pytest.raises(ValueError, match="unknown congestion control algorithm 'bbr'"):
        new_recovery(cfg, True)
    with pytest.raises(ValueError, match="unknown congestion control algorithm 'bbr'"):
        client_connection(cfg, ("127.0.0.1", 4433), 0.0)
    with pytest.raises(ValueError, match="unknown congestion control algorithm 'bbr'"):
        server_connection(cfg, ("127.0.0.1", 5000), b"\x01" * 8, 0.0)


def test_inline_of_a_class_with_post_init_is_explicit() -> None:
    from quicflow.transport.congestion import CongestionControl
    from quicflow.transport.recovery import LossDetection

    with pytest.raises(TypeError, match="__post_init__"):
        inline_init(LossDetection, cc=Inline(CongestionControl))
    make = inline_init(LossDetection, cc=Inline.post_init_done(CongestionControl, cwnd=5))
    assert make().cc.cwnd == 5


def test_inline_init_arguments_at_any_depth() -> None:
    with pytest.raises(TypeError):  # int is no dataclass: no fields to fill
        inline_init(SendStream, max_data=Inline(int))
    make2 = inline_init(SendStream, max_data=Arg("limit"), lost=Inline(RangeSet, starts=Arg("s")))
    s = make2(limit=9, s=[4])
    assert s.max_data == 9 and s.lost.starts == [4]
    with pytest.raises(TypeError, match="twice"):
        inline_init(SendStream, max_data=Arg("a"), next_offset=Arg("a"))
