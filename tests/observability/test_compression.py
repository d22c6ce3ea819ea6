"""Response compression: zstd, brotli or gzip as the client accepts, above a size threshold;
event streams pass through unbuffered."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import brotli
import httpx
import pytest
import zstandard
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from metis_rag.observability.compression import Compression, accepted_encodings

BIG = ("Metis answers questions with citations. " * 200).encode()


async def big(_: Request) -> Response:
    return PlainTextResponse(BIG)


async def small(_: Request) -> Response:
    return PlainTextResponse("short")


async def precompressed(_: Request) -> Response:
    return Response(gzip.compress(BIG), headers={"content-encoding": "gzip"},
                    media_type="text/plain")


async def chunks(_: Request) -> Response:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"chunk {i} ".encode() * 300

    return StreamingResponse(gen(), media_type="text/plain")


async def events(_: Request) -> Response:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"event: token\ndata: {i}\n\n".encode() * 100

    return StreamingResponse(gen(), media_type="text/event-stream")


def client(min_bytes: int = 1024) -> httpx.AsyncClient:
    app = Starlette(routes=[Route(p, f) for p, f in [
        ("/big", big), ("/small", small), ("/pre", precompressed), ("/chunks", chunks),
        ("/events", events)]])
    wrapped = Compression(app, min_bytes=min_bytes)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped), base_url="http://t")


async def raw(path: str, accept: str, min_bytes: int = 1024) -> httpx.Response:
    async with client(min_bytes) as c:
        async with c.stream("GET", path, headers={"accept-encoding": accept}) as r:
            r._content = b"".join([part async for part in r.aiter_raw()])
            return r


def decode(coding: str | None, body: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    if coding == "br":
        return bytes(brotli.decompress(body))
    return body


@pytest.mark.parametrize(("accept", "expected"), [
    ("gzip", "gzip"),
    ("gzip, deflate, br", "br"),
    ("gzip, deflate, br, zstd", "zstd"),
    ("zstd;q=0, gzip", "gzip"),
    ("br;q=0.5, gzip;q=1.0", "br"),
    ("identity", None),
])
async def test_the_preferred_accepted_coding_is_used(accept: str, expected: str | None) -> None:
    r = await raw("/big", accept)
    assert r.headers.get("content-encoding") == expected
    assert decode(expected, r.content) == BIG
    if expected:
        assert len(r.content) < len(BIG) / 5
        assert int(r.headers["content-length"]) == len(r.content)
        assert "accept-encoding" in r.headers["vary"].lower()


def test_q_values_parse() -> None:
    assert accepted_encodings("gzip;q=0, br ;q=0.1, zstd;q=x, *") == {"br", "*"}


async def test_small_and_already_encoded_bodies_pass_through() -> None:
    r = await raw("/small", "gzip, zstd")
    assert "content-encoding" not in r.headers and r.content == b"short"
    r = await raw("/small", "gzip", min_bytes=0)
    assert r.headers["content-encoding"] == "gzip" and decode("gzip", r.content) == b"short"
    r = await raw("/pre", "zstd, gzip")
    assert r.headers["content-encoding"] == "gzip" and gzip.decompress(r.content) == BIG


@pytest.mark.parametrize("coding", ["gzip", "zstd", "br"])
async def test_streamed_bodies_are_compressed_chunk_by_chunk(coding: str) -> None:
    r = await raw("/chunks", coding)
    assert r.headers["content-encoding"] == coding
    assert "content-length" not in r.headers
    expected = b"".join(f"chunk {i} ".encode() * 300 for i in range(5))
    assert decode(coding, r.content) == expected


async def test_event_streams_are_never_compressed() -> None:
    r = await raw("/events", "gzip, br, zstd")
    assert "content-encoding" not in r.headers
    assert r.content.count(b"event: token") == 500
