"""The small request/response protocol the transfer tests speak (ALPN ``perf``).

It is the perf protocol (draft-banks-quic-performance) with a seed and a digest added, so
both ends can check every byte::

    client -> server:  response_size (8 bytes, big endian) | seed (8 bytes) | upload ... FIN
    server -> client:  sha256(upload) (32 bytes) | len(upload) (8 bytes) | payload(seed, size) FIN

``payload(seed, size)`` is a deterministic pseudo-random byte string, so the client
knows the SHA-256 of what it must receive without the bytes travelling twice.  The
functions here are plain (no I/O): the quicflow tests, the aioquic peer process and
the server handlers all use them, whatever stack carries the bytes.
"""

from __future__ import annotations

import hashlib
import random
import struct

REQUEST_HEADER = struct.Struct("!QQ")
RESPONSE_HEADER_LEN = 32 + 8
CHUNK = 1 << 20


def payload(seed: int, size: int) -> bytes:
    """``size`` deterministic pseudo-random bytes for ``seed``."""
    if size <= 0:
        return b""
    return random.Random(seed).randbytes(size)


def payload_chunks(seed: int, size: int, chunk: int = CHUNK) -> list[bytes]:
    data = payload(seed, size)
    return [data[i : i + chunk] for i in range(0, len(data), chunk)]


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def request_header(response_size: int, seed: int) -> bytes:
    return REQUEST_HEADER.pack(response_size, seed)


def parse_request_header(data: bytes) -> tuple[int, int]:
    size, seed = REQUEST_HEADER.unpack(data)
    return size, seed


def response_header(upload_digest: bytes, upload_len: int) -> bytes:
    return upload_digest + struct.pack("!Q", upload_len)


def parse_response_header(data: bytes) -> tuple[bytes, int]:
    return data[:32], struct.unpack("!Q", data[32:40])[0]


async def serve_stream(reader: object, writer: object) -> None:
    """Server side of one stream, for any asyncio-style reader/writer pair
    (quicflow's or asyncio's): read the request to FIN, answer, FIN."""
    head = await reader.readexactly(REQUEST_HEADER.size)  # type: ignore[attr-defined]
    size, seed = parse_request_header(head)
    h = hashlib.sha256()
    n = 0
    while True:
        chunk = await reader.read(CHUNK)  # type: ignore[attr-defined]
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    writer.write(response_header(h.digest(), n))  # type: ignore[attr-defined]
    for part in payload_chunks(seed, size):
        writer.write(part)  # type: ignore[attr-defined]
        await writer.drain()  # type: ignore[attr-defined]
    writer.write_eof()  # type: ignore[attr-defined]


async def client_exchange(
    reader: object, writer: object, *, upload: bytes, download: int, seed: int
) -> dict[str, object]:
    """Client side of one stream: send the request and ``upload``, read the answer, and
    check both directions.  Returns a dict with ``ok`` and the details of any mismatch."""
    writer.write(request_header(download, seed))  # type: ignore[attr-defined]
    for i in range(0, len(upload), CHUNK):
        writer.write(upload[i : i + CHUNK])  # type: ignore[attr-defined]
        await writer.drain()  # type: ignore[attr-defined]
    writer.write_eof()  # type: ignore[attr-defined]
    head = await reader.readexactly(RESPONSE_HEADER_LEN)  # type: ignore[attr-defined]
    up_digest, up_len = parse_response_header(head)
    h = hashlib.sha256()
    n = 0
    while True:
        chunk = await reader.read(CHUNK)  # type: ignore[attr-defined]
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    expected_down = digest(payload(seed, download))
    result: dict[str, object] = {
        "upload_len_seen_by_server": up_len,
        "upload_len": len(upload),
        "upload_intact": up_digest == digest(upload) and up_len == len(upload),
        "download_len": n,
        "download_expected_len": download,
        "download_intact": h.digest() == expected_down and n == download,
    }
    result["ok"] = bool(result["upload_intact"] and result["download_intact"])
    return result
