"""Bytes withdrawn before a capture (``Connection.take_back_unsent``) leave the
connection's send buffer account (``send_buffered``, main's bound on written but
unacknowledged bytes): otherwise the restored connection would count them forever and
its writers would wait at a bound that acknowledgments can never lower again."""

from __future__ import annotations

from .test_snapshot import _established


def test_take_back_unsent_releases_the_withdrawn_bytes() -> None:
    _, _, server = _established()
    conn = server.conn
    assert conn is not None
    before = conn.send_buffered
    sid = conn.open_stream()
    conn.send_stream_data(sid, b"x" * 300_000, end_stream=True)
    assert conn.send_buffered == before + 300_000
    # nothing of it was sent (no step ran): all of it is withdrawn, the FIN too
    assert conn.take_back_unsent(sid) == 0
    assert conn.send_buffered == before
    assert not conn.streams[sid].send.fin_written  # type: ignore[union-attr]
