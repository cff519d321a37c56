"""A request stream's STREAM frame arriving again after the request was read (a client's
retransmission whose ACK was lost, or its resend after a path change, as ngtcp2's
gtlsclient does) must not start a second request on that stream.

Sans-I/O: a transport pair in memory, quicflow's HTTP/3 on the server. The transport
reports a duplicate frame on a fully read stream as readable again (the stream is still
at its end); before the fix, the HTTP/3 layer took the stream for a new request that
ended before its headers and reset the response in progress with H3_REQUEST_INCOMPLETE
(found by tests/test_interop_ngtcp2.py's client-migration case).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from quicflow.crypto.epoch import Epoch
from quicflow.h3.connection import H3Connection
from quicflow.h3.events import DataReceived, H3Event, HeadersReceived, StreamReset
from quicflow.wire import frames as WF
from tests.support.forge import encode_frames, forge
from tests.support.memory_pair import MemoryPair
from tests.support.prereq import have_module
from tests.test_h3_loopback import h3_client_config, h3_server_config

HEAD = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
        (b":path", b"/big")]


@pytest.fixture(autouse=True)
def _lsqpack(require: Callable[[bool, str], None]) -> None:
    require(have_module("pylsqpack"), "pylsqpack not installed (pip install 'quicflow[h3]')")


def test_duplicate_request_frame_after_request_read_does_not_reset_response() -> None:
    import pylsqpack

    from quicflow.h3 import frames as F

    pair = MemoryPair(client_config=replace(h3_client_config(), verify_peer=False),
                      server_config=h3_server_config())
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns)
             and pair.server_conns[0].handshake_confirmed)
    server = pair.server_conns[0]
    h3 = H3Connection(server, is_client=False)
    events: list[H3Event] = []

    def feed() -> None:
        for event in server.pop_events():
            events.extend(h3.handle_event(event))

    _, block = pylsqpack.Encoder().encode(0, HEAD)  # static table only
    request = F.encode_frame(F.HEADERS, block)
    sid = pair.client.open_stream()
    pair.client.send_stream_data(sid, request, end_stream=True)

    def request_read() -> bool:
        feed()
        return any(isinstance(e, DataReceived) and e.stream_ended for e in events)

    pair.run(request_read, max_time=5)
    assert [type(e) for e in events if e.stream_id == sid] == [HeadersReceived, DataReceived]
    # the whole response is written (the request is done on our side) but not yet sent
    h3.send_headers(sid, [(b":status", b"200")])
    h3.send_data(sid, b"x" * 500_000, end_stream=True)
    # the request's STREAM frame again, with its FIN
    duplicate = encode_frames([WF.Stream(sid, 0, request, True)])
    pair.server.receive(forge(pair.client, Epoch.ONE_RTT, duplicate), pair.client_addr,
                        pair.now)
    events.clear()
    feed()
    assert not [e for e in events if isinstance(e, StreamReset)]
    stream = server.streams.get(sid)
    assert stream is not None and stream.send is not None
    assert stream.send.reset_code is None
    assert h3.counters.requests_received == 1
