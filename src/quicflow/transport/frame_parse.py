"""The frames of a received packet's payload, parsed once per packet on the receive path.

``parse_frames`` is ``wire.frames.parse_frames``, with its common case in C
(``quicflow.crypto._native.parse_frames``): a payload made only of PADDING, PING, ACK,
CRYPTO, STREAM, NEW_CONNECTION_ID, CONNECTION_CLOSE, HANDSHAKE_DONE, MAX_DATA and
MAX_STREAM_DATA frames, each well formed — what a handshake's packets and plain 1-RTT
packets carry, and a receiver's window updates beside its ACKs — becomes the same frame
objects. Anything else (another frame type, any malformed frame) goes to the
reference, which parses it or raises ``FrameEncodingError`` with its frame type: the
result never depends on the parser (tests/test_frame_parse_native.py).
``QUICFLOW_ENGINE=python`` (or no extension) uses the reference alone.

C builds the objects of ``CLASSES`` without calling their ``__init__``: each is a slotted
dataclass whose generated ``__init__`` only assigns the fields in ``__slots__`` order (no
``__post_init__``), so the object is its allocation with the slots set (a class that is
not of this kind is called instead). A received long-header packet's frames come from
the same C code, in the call that opens it (``PacketProtector.open_frames``).
"""

from __future__ import annotations

from typing import Any

from ..crypto.extension import EXT, python_forced
from ..wire import frames as F

#: the C parser, or None (not built, or the pure-Python code forced)
NATIVE_PARSE: Any = (
    getattr(EXT, "parse_frames", None) if EXT is not None and not python_forced() else None
)
#: the classes C makes, in the order it expects them
CLASSES = (F.Padding, F.Ping, F.Ack, F.Crypto, F.Stream, F.NewConnectionId,
           F.ConnectionClose, F.HandshakeDone, F.MaxData, F.MaxStreamData)


def _parse_frames(payload: bytes | bytearray | memoryview) -> list[F.Frame]:
    """``wire.frames.parse_frames``: the frames of a decrypted payload."""
    frames: list[F.Frame] | None = NATIVE_PARSE(payload, CLASSES)
    if frames is not None:
        return frames
    return F.parse_frames(payload)


parse_frames = F.parse_frames if NATIVE_PARSE is None else _parse_frames

__all__ = ["CLASSES", "NATIVE_PARSE", "parse_frames"]
