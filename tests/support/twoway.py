"""A sans-I/O test app with data flowing both ways on streams opened by both sides.

Each side opens one bidirectional stream and writes ``size`` deterministic bytes and FIN
on it; the other side reads that stream to its end and answers on it with the SHA-256 of
what it got and FIN. A side is done when its own stream's answer matches. The state is
JSON (see ``state``) so it can travel with a snapshot.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random

from quicflow.transport.connection import Connection

CHUNK = 16 * 1024
AHEAD = 128 * 1024


def data_for(is_client: bool, size: int) -> bytes:
    return random.Random(7 if is_client else 11).randbytes(size)


class TwoWayApp:
    def __init__(self, is_client: bool, size: int, state: bytes = b"") -> None:
        self.is_client = is_client
        self.size = size
        self.own: int | None = None  # our stream id
        self.sent = 0
        self.answer = b""  # what came back on our stream
        self.peer: dict[int, bytes] = {}  # peer stream id -> what it sent so far
        self.answered: list[int] = []
        if state:
            doc = json.loads(state)
            self.own, self.sent = doc["own"], doc["sent"]
            self.answer = base64.b64decode(doc["answer"])
            self.peer = {int(k): base64.b64decode(v) for k, v in doc["peer"].items()}
            self.answered = doc["answered"]

    def state(self) -> bytes:
        return json.dumps({
            "own": self.own, "sent": self.sent,
            "answer": base64.b64encode(self.answer).decode(),
            "peer": {str(k): base64.b64encode(v).decode() for k, v in self.peer.items()},
            "answered": self.answered,
        }).encode()

    @property
    def done(self) -> bool:
        want = hashlib.sha256(data_for(self.is_client, self.size)).digest()
        return self.answer == want and len(self.answered) >= 1

    def process(self, conn: Connection) -> None:
        conn.pop_events()
        if not conn.handshake_complete:
            return
        if self.own is None:
            self.own = conn.open_stream()
        body = data_for(self.is_client, self.size)
        while self.sent < self.size and conn.stream_buffered(self.own) < AHEAD:
            end = min(self.sent + CHUNK, self.size)
            conn.send_stream_data(self.own, body[self.sent:end], end_stream=end == self.size)
            self.sent = end
        if len(self.answer) < 32:
            self.answer += conn.read_stream(self.own)
        for sid in conn.stream_ids():
            peer_opened = bool(sid & 1) == self.is_client
            if peer_opened and sid not in self.peer and sid not in self.answered:
                self.peer[sid] = b""
        for sid in list(self.peer):
            self.peer[sid] += conn.read_stream(sid)
            if conn.stream_at_eof(sid):
                digest = hashlib.sha256(self.peer.pop(sid)).digest()
                conn.send_stream_data(sid, digest, end_stream=True)
                self.answered.append(sid)
