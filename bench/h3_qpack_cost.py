"""What HTTP/3's capturable mode costs: header bytes with and without a QPACK dynamic
table (``quicflow.h3.serve(..., migratable=True)`` advertises capacity 0, and its encoder
uses none).

For N requests and N responses of one connection (browser-like request heads, typical
response heads with a varying date/etag/length), prints per message the bytes of the
HEADERS field sections plus the encoder-stream bytes, with the dynamic table (4096 bytes,
16 blocked streams: quicflow's and aioquic's default) and without (capacity 0), and the
encode+decode time per message. Sans-I/O (pylsqpack only), deterministic byte counts.

    .venv/bin/python bench/h3_qpack_cost.py [--messages 100]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import pylsqpack


def request_head(i: int) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"www.example.com"),
        (b":path", f"/static/app/chunk-{i:04d}.js".encode()),
        (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 "
                        b"Firefox/128.0"),
        (b"accept", b"*/*"), (b"accept-language", b"en-US,en;q=0.5"),
        (b"accept-encoding", b"gzip, deflate, br, zstd"),
        (b"referer", b"https://www.example.com/"),
        (b"cookie", b"session=3f9a1c2be7d44a0c9f1e6b2d8a7c5e30; theme=dark; consent=yes"),
        (b"sec-fetch-dest", b"script"), (b"sec-fetch-mode", b"no-cors"),
        (b"sec-fetch-site", b"same-origin"), (b"priority", b"u=2"),
    ]


def response_head(i: int) -> list[tuple[bytes, bytes]]:
    return [
        (b":status", b"200"), (b"content-type", b"application/javascript; charset=utf-8"),
        (b"content-length", str(10000 + 37 * i).encode()),
        (b"date", f"Sun, 29 Nov 2026 23:{i // 60 % 60:02d}:{i % 60:02d} GMT".encode()),
        (b"etag", f'"{i:08x}-5f3c2a"'.encode()),
        (b"cache-control", b"public, max-age=31536000, immutable"),
        (b"server", b"quicflow"), (b"vary", b"accept-encoding"),
        (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
        (b"alt-svc", b'h3=":443"; ma=86400'),
    ]


def run(heads: list[list[tuple[bytes, bytes]]], capacity: int, blocked: int
        ) -> tuple[int, int, float]:
    """(field-section bytes, encoder-stream bytes, seconds) for ``heads`` over one
    encoder/decoder pair whose decoder advertised ``capacity``/``blocked``."""
    encoder = pylsqpack.Encoder()
    decoder = pylsqpack.Decoder(capacity, blocked)
    enc_stream = encoder.apply_settings(capacity, blocked)
    decoder.feed_encoder(enc_stream)
    len_enc = len(enc_stream)
    blocks = 0
    start = time.perf_counter()
    for i, head in enumerate(heads):
        sid = 4 * i
        enc_data, block = encoder.encode(sid, head)
        len_enc += len(enc_data)
        blocks += len(block)
        decoder.feed_encoder(enc_data)
        control, decoded = decoder.feed_header(sid, block)
        assert decoded == head
        if control:
            encoder.feed_decoder(control)
    return blocks, len_enc, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100, help="requests and responses")
    args = parser.parse_args()
    n = args.messages
    result: dict[str, dict[str, float]] = {}
    for kind, make in (("request", request_head), ("response", response_head)):
        heads = [make(i) for i in range(n)]
        raw = sum(len(k) + len(v) for k, v in heads[0])
        for label, cap, blocked in (("dynamic_table", 4096, 16), ("capturable", 0, 0)):
            blocks, enc, secs = run(heads, cap, blocked)
            result[f"{kind}_{label}"] = {
                "bytes_per_message": round((blocks + enc) / n, 1),
                "field_section_bytes": blocks, "encoder_stream_bytes": enc,
                "us_per_message": round(secs / n * 1e6, 1), "raw_bytes": raw,
            }
        dyn = result[f"{kind}_dynamic_table"]["bytes_per_message"]
        cap0 = result[f"{kind}_capturable"]["bytes_per_message"]
        print(f"{kind}: {dyn} B/message with the dynamic table, {cap0} without "
              f"({cap0 / dyn:.1f}x; uncompressed {raw} B)", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
