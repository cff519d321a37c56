"""A Starlette application for the ASGI-over-HTTP/3 tests (``quicflow serve``).

GET /              -> "hello from starlette"
GET /bytes/{n}     -> n bytes of ``body_of(n)`` (x-sha256 header)
POST /sha          -> JSON {"sha256", "size"} of the request body
GET /stream/{n}    -> n chunks of 64 KiB, streamed (StreamingResponse)
GET /stall/{n}     -> the same n chunks, then "stalled after n chunks" on stderr and no end
GET /state         -> JSON {"started": true} once the lifespan startup ran
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route


def body_of(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(f"{seed}".encode()).digest() * 2048
    return (block * (size // len(block) + 1))[:size]


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello from starlette")


async def nbytes(request: Request) -> Response:
    data = body_of(int(request.path_params["n"]))
    return Response(data, headers={"x-sha256": hashlib.sha256(data).hexdigest()},
                    media_type="application/octet-stream")


async def sha(request: Request) -> Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    return JSONResponse({"sha256": digest.hexdigest(), "size": size})


async def stream(request: Request) -> Response:
    n = int(request.path_params["n"])

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(n):
            yield body_of(65536, seed=i)

    return StreamingResponse(chunks(), media_type="application/octet-stream")


async def stall(request: Request) -> Response:
    n = int(request.path_params["n"])

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(n):
            yield body_of(65536, seed=i)
        print(f"stalled after {n} chunks", file=sys.stderr, flush=True)
        await asyncio.Event().wait()

    return StreamingResponse(chunks(), media_type="application/octet-stream")


async def state(request: Request) -> Response:
    return JSONResponse({"started": getattr(request.app.state, "started", False)})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.started = True
    print("lifespan startup", file=sys.stderr, flush=True)
    yield
    print("lifespan shutdown", file=sys.stderr, flush=True)


app = Starlette(
    routes=[
        Route("/", hello),
        Route("/bytes/{n:int}", nbytes),
        Route("/sha", sha, methods=["POST"]),
        Route("/stream/{n:int}", stream),
        Route("/stall/{n:int}", stall),
        Route("/state", state),
    ],
    lifespan=lifespan,
)
