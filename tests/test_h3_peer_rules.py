"""RFC 9114 rules a peer's HTTP/3 bytes can break, both roles, on two sans-I/O endpoints:
quicflow's ``H3Connection`` on one side, a bare QUIC connection writing hand-made
HTTP/3 on the other. Each case failed before its fix (the thirty-third pass):

- an empty DATA frame was skipped by the frame parser, so one on the control stream,
  before a request's HEADERS or after its trailers was no error (§4.1, §7.2.1);
- a MAX_PUSH_ID smaller than the one before was taken (§7.2.7: H3_ID_ERROR);
- HEADERS on a CONNECT stream after its head were taken as trailers (§4.4);
- field names with characters outside tchar and values with control characters were
  delivered (§10.3, §4.1.2: H3_MESSAGE_ERROR);
- an https request without :authority or Host, with an empty one, or with both
  different, was delivered (§4.3.1);
- a client closed on PUSH_PROMISE with H3_FRAME_UNEXPECTED, not H3_ID_ERROR (§7.2.5);
- a client reset a 304 or HEAD response that had a content-length and no DATA (§4.1.2);
- a QPACK insert before any Set Dynamic Table Capacity was taken (RFC 9204 §3.2.2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from quicflow.h3 import errors as E
from quicflow.h3 import frames as F
from quicflow.h3.connection import H3Connection
from quicflow.h3.events import DataReceived, H3Event, HeadersReceived, StreamReset
from quicflow.transport import events as TE
from quicflow.transport.connection import Connection
from quicflow.wire.varint import encode_varint
from tests.support.memory_pair import MemoryPair
from tests.support.prereq import have_module
from tests.test_h3_errors import SETTINGS, request_block
from tests.test_h3_loopback import h3_client_config, h3_server_config

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
       (b":path", b"/")]


@pytest.fixture(autouse=True)
def _lsqpack(require: Callable[[bool, str], None]) -> None:
    require(have_module("pylsqpack"), "pylsqpack not installed (pip install 'quicflow[h3]')")


class Rig:
    """``tested`` ("server" or "client") runs quicflow's HTTP/3; the other side is raw."""

    def __init__(self, tested: str) -> None:
        pair = self.pair = MemoryPair(
            client_config=replace(h3_client_config(), verify_peer=False),
            server_config=h3_server_config())
        pair.run(lambda: bool(pair.client.handshake_confirmed and pair.server_conns
                              and pair.server_conns[0].handshake_confirmed))
        server = pair.server_conns[0]
        self.me: Connection = pair.client if tested == "client" else server
        self.raw: Connection = server if tested == "client" else pair.client
        self.me.pop_events()
        self.raw.pop_events()
        self.h3 = H3Connection(self.me, is_client=tested == "client")
        self.h3.start()
        self.events: list[H3Event] = []
        self.raw_events: list[object] = []

    def control(self, payload: bytes = SETTINGS) -> None:
        sid = self.raw.open_stream(False)
        self.raw.send_stream_data(sid, encode_varint(F.STREAM_CONTROL) + payload)

    def request(self, payload: bytes, fin: bool = True) -> int:
        sid = self.raw.open_stream(True)
        self.raw.send_stream_data(sid, payload, fin)
        return sid

    def settle(self) -> None:
        pair = self.pair
        end = pair.now + 0.3

        def done() -> bool:
            for event in self.me.pop_events():
                self.events.extend(self.h3.handle_event(event))
            self.raw_events.extend(self.raw.pop_events())
            return pair.now >= end

        try:
            pair.run(done, max_time=end + 5)
        except AssertionError:  # (all quiet before the time: nothing more will come)
            done()

    def closed_with(self) -> int | None:
        error = self.me.close_error
        return None if error is None else error[0]

    def reset_code(self, sid: int) -> int | None:
        codes = [e.error_code for e in self.raw_events
                 if isinstance(e, TE.StreamReset) and e.stream_id == sid]
        return codes[0] if codes else None


@pytest.mark.parametrize("where", ["control", "control-first", "before-headers",
                                   "after-trailers"])
def test_an_empty_data_frame_where_none_may_be(where: str) -> None:
    rig = Rig("server")
    empty = F.encode_frame(F.DATA, b"")
    if where == "control-first":
        rig.control(empty + SETTINGS)
    else:
        rig.control(SETTINGS + (empty if where == "control" else b""))
    if where == "before-headers":
        rig.request(empty + request_block(GET))
    elif where == "after-trailers":
        rig.request(request_block(GET) + request_block([(b"x-t", b"1")]) + empty)
    rig.settle()
    expected = E.H3_MISSING_SETTINGS if where == "control-first" else E.H3_FRAME_UNEXPECTED
    assert rig.closed_with() == expected


def test_an_empty_data_frame_in_a_body_is_nothing() -> None:
    rig = Rig("server")
    rig.control()
    sid = rig.request(request_block(GET) + F.encode_frame(F.DATA, b"")
                      + F.encode_frame(F.DATA, b"ab"))
    rig.settle()
    assert rig.closed_with() is None
    data = [e for e in rig.events if isinstance(e, DataReceived) and e.stream_id == sid]
    assert b"".join(e.data for e in data) == b"ab" and data[-1].stream_ended
    assert all(e.data or e.stream_ended for e in data)


def test_max_push_id_may_not_go_down() -> None:
    rig = Rig("server")
    rig.control(SETTINGS + F.encode_frame(F.MAX_PUSH_ID, encode_varint(10))
                + F.encode_frame(F.MAX_PUSH_ID, encode_varint(10))
                + F.encode_frame(F.MAX_PUSH_ID, encode_varint(5)))
    rig.settle()
    assert rig.closed_with() == E.H3_ID_ERROR


def test_headers_on_a_connect_stream_after_its_head() -> None:
    rig = Rig("server")
    rig.control()
    connect = [(b":method", b"CONNECT"), (b":authority", b"example.com:443")]
    rig.request(request_block(connect) + F.encode_frame(F.DATA, b"tunnel")
                + request_block([(b"x-t", b"1")]), fin=False)
    rig.settle()
    assert rig.closed_with() == E.H3_FRAME_UNEXPECTED


@pytest.mark.parametrize("field", [(b"x foo", b"1"), (b"x:foo", b"1"), (b"x(", b"1"),
                                   (b"x-ok", b"a\x01b"), (b"x-ok", b"a\x7fb")])
def test_invalid_characters_in_a_request_field(field: tuple[bytes, bytes]) -> None:
    rig = Rig("server")
    rig.control()
    sid = rig.request(request_block([*GET, field]))
    rig.settle()
    assert rig.closed_with() is None
    assert rig.reset_code(sid) == E.H3_MESSAGE_ERROR
    assert not [e for e in rig.events if isinstance(e, HeadersReceived)], "delivered"


@pytest.mark.parametrize("case", ["neither", "empty-authority", "empty-host", "differ"])
def test_authority_and_host_rules(case: str) -> None:
    head = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")]
    extra = {"neither": [], "empty-authority": [(b":authority", b"")],
             "empty-host": [(b"host", b"")],
             "differ": [(b":authority", b"a.example"), (b"host", b"b.example")]}[case]
    pseudo = [f for f in extra if f[0].startswith(b":")]
    regular = [f for f in extra if not f[0].startswith(b":")]
    rig = Rig("server")
    rig.control()
    sid = rig.request(request_block(head + pseudo + regular))
    rig.settle()
    assert rig.reset_code(sid) == E.H3_MESSAGE_ERROR
    assert not [e for e in rig.events if isinstance(e, HeadersReceived)], "delivered"


def test_host_alone_or_equal_to_authority_is_served() -> None:
    rig = Rig("server")
    rig.control()
    alone = rig.request(request_block([(b":method", b"GET"), (b":scheme", b"https"),
                                  (b":path", b"/"), (b"host", b"localhost")]))
    both = rig.request(request_block([*GET, (b"host", b"localhost")], 4))
    rig.settle()
    assert rig.reset_code(alone) is None and rig.reset_code(both) is None
    assert {e.stream_id for e in rig.events if isinstance(e, HeadersReceived)} == {alone, both}


def _client_request(rig: Rig, method: bytes) -> int:
    sid = rig.h3.open_request()
    rig.h3.send_headers(sid, [(b":method", method), *GET[1:]], end_stream=True)
    rig.settle()
    return sid


def test_a_client_closes_on_push_promise_with_h3_id_error() -> None:
    rig = Rig("client")
    rig.control()
    sid = _client_request(rig, b"GET")
    rig.raw.send_stream_data(sid, F.encode_frame(F.PUSH_PROMISE, encode_varint(0)
                                                 + b"\x00\x00"))
    rig.settle()
    assert rig.closed_with() == E.H3_ID_ERROR


@pytest.mark.parametrize("method, status", [(b"GET", b"304"), (b"HEAD", b"200")])
def test_a_response_without_content_may_carry_a_content_length(method: bytes,
                                                               status: bytes) -> None:
    rig = Rig("client")
    rig.control()
    sid = _client_request(rig, method)
    rig.raw.send_stream_data(sid, request_block([(b":status", status), (b"content-length", b"100")],
                                           sid), True)
    rig.settle()
    assert rig.reset_code(sid) is None and rig.closed_with() is None
    ends = [e for e in rig.events if isinstance(e, DataReceived) and e.stream_id == sid]
    assert ends and ends[-1].stream_ended and not b"".join(e.data for e in ends)


def test_a_get_response_shorter_than_its_content_length_is_still_malformed() -> None:
    rig = Rig("client")
    rig.control()
    sid = _client_request(rig, b"GET")
    rig.raw.send_stream_data(sid, request_block([(b":status", b"200"), (b"content-length", b"100")],
                                           sid), True)
    rig.settle()
    assert rig.closed_with() is None
    resets = [e for e in rig.events if isinstance(e, StreamReset) and e.stream_id == sid]
    assert resets and resets[0].error_code == E.H3_MESSAGE_ERROR and not resets[0].by_peer
    assert not [e for e in rig.events if isinstance(e, DataReceived) and e.stream_ended]


def _encoder_stream(rig: Rig, instructions: bytes) -> None:
    sid = rig.raw.open_stream(False)
    rig.raw.send_stream_data(sid, encode_varint(F.STREAM_QPACK_ENCODER) + instructions)


def test_a_qpack_insert_before_set_dynamic_table_capacity_is_an_encoder_stream_error(
) -> None:
    """RFC 9204 §3.2.2: the dynamic table's capacity is 0 until the encoder sets it, so an
    insert first is QPACK_ENCODER_STREAM_ERROR (pylsqpack starts at the advertised
    maximum and took it)."""
    rig = Rig("server")
    rig.control()
    _encoder_stream(rig, bytes([0x40 | 5]) + b"x-dyn" + bytes([1]) + b"v")
    rig.settle()
    assert rig.closed_with() == E.QPACK_ENCODER_STREAM_ERROR


def test_a_qpack_insert_after_set_dynamic_table_capacity_is_taken() -> None:
    rig = Rig("server")
    rig.control()
    # Set Dynamic Table Capacity 4096: a 5-bit prefix integer, 31 then 4065 in 2 bytes
    set_capacity = bytes([0x3F, (4065 & 0x7F) | 0x80, 4065 >> 7])
    _encoder_stream(rig, set_capacity + bytes([0x40 | 5]) + b"x-dyn" + bytes([1]) + b"v")
    rig.settle()
    assert rig.closed_with() is None
