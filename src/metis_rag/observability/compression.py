"""`Compression`: zstd, brotli or gzip response bodies, whichever the client accepts (in that
order of preference), above a size threshold.

Server-sent event streams pass through untouched and unbuffered: a compressor holds bytes back
until it has enough to work with, which would stall tokens on their way to the user. Other
streamed bodies are compressed chunk by chunk with a flush after each, so they stream too.
"""

from __future__ import annotations

import zlib
from typing import Any, Protocol

import zstandard
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_UNKNOWN = object()
_INCOMPRESSIBLE = ("text/event-stream", "image/", "video/", "audio/", "application/zip",
                   "application/gzip", "application/zstd", "font/woff")


class _Stream(Protocol):
    def chunk(self, data: bytes) -> bytes: ...

    def finish(self, data: bytes) -> bytes: ...


class _Gzip:
    def __init__(self, level: int) -> None:
        self._c = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def chunk(self, data: bytes) -> bytes:
        return self._c.compress(data) + self._c.flush(zlib.Z_SYNC_FLUSH)

    def finish(self, data: bytes) -> bytes:
        return self._c.compress(data) + self._c.flush()


class _Zstd:
    def __init__(self, level: int) -> None:
        self._c = zstandard.ZstdCompressor(level=level).compressobj()

    def chunk(self, data: bytes) -> bytes:
        return self._c.compress(data) + self._c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self, data: bytes) -> bytes:
        return self._c.compress(data) + self._c.flush()


class _Brotli:
    def __init__(self, quality: int) -> None:
        import brotli

        self._c = brotli.Compressor(quality=quality)

    def chunk(self, data: bytes) -> bytes:
        return bytes(self._c.process(data) + self._c.flush())

    def finish(self, data: bytes) -> bytes:
        return bytes(self._c.process(data) + self._c.finish())


def _brotli_available() -> bool:
    try:
        import brotli  # noqa: F401
    except ImportError:
        return False
    return True


def accepted_encodings(header: str) -> set[str]:
    """Codings the client accepts (q > 0), lower-cased."""
    out = set()
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if name and q > 0:
            out.add(name.strip().lower())
    return out


class Compression:
    def __init__(self, app: ASGIApp, min_bytes: int = 1024, gzip_level: int = 6,
                 zstd_level: int = 3, brotli_quality: int = 4) -> None:
        self.app = app
        self.min_bytes = min_bytes
        self.gzip_level = gzip_level
        self.zstd_level = zstd_level
        # Quality 4 is brotli's sweet spot for dynamic responses: near gzip speed, smaller.
        self.brotli_quality = brotli_quality
        self._preference = ["zstd", *(["br"] if _brotli_available() else []), "gzip"]
        # Whole bodies (most responses) are compressed in one call by a reused compressor:
        # building a zstd context per response cost ~180 us, more than the rest of a cache hit.
        self._zstd = zstandard.ZstdCompressor(level=zstd_level)
        self._chosen: dict[bytes, str | None] = {}  # clients send a handful of distinct headers

    def choose(self, accept_encoding: bytes) -> str | None:
        chosen = self._chosen.get(accept_encoding, _UNKNOWN)
        if chosen is not _UNKNOWN:  # a sentinel, not None: None is a remembered answer
            return chosen  # type: ignore[return-value]
        accepted = accepted_encodings(accept_encoding.decode("latin-1"))
        chosen = next((c for c in self._preference if c in accepted), None)
        if len(self._chosen) < 256:
            self._chosen[accept_encoding] = chosen
        return chosen

    def compress_whole(self, coding: str, body: bytes) -> bytes:
        if coding == "zstd":
            return self._zstd.compress(body)
        if coding == "br":
            import brotli

            return bytes(brotli.compress(body, quality=self.brotli_quality))
        return zlib.compress(body, self.gzip_level, wbits=16 + zlib.MAX_WBITS)

    def compressor(self, coding: str) -> _Stream:
        if coding == "zstd":
            return _Zstd(self.zstd_level)
        if coding == "br":
            return _Brotli(self.brotli_quality)
        return _Gzip(self.gzip_level)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accept = next((v for k, v in scope["headers"] if k == b"accept-encoding"), b"")
        coding = self.choose(accept) if accept else None
        if coding is None:
            await self.app(scope, receive, send)
            return
        await _Responder(self, coding, send).run(self.app, scope, receive)


class _Responder:
    """Holds the response start until the first body chunk tells whether to compress."""

    def __init__(self, owner: Compression, coding: str, send: Send) -> None:
        self.owner = owner
        self.coding = coding
        self.send = send
        self.start: Message | None = None
        self.mode = "undecided"  # then "pass" or "compress"
        self.stream: _Stream | None = None

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive) -> None:
        await app(scope, receive, self.on_send)

    async def on_send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            headers = Headers(raw=message.get("headers", []))
            content_type = headers.get("content-type", "")
            if "content-encoding" in headers or content_type.startswith(_INCOMPRESSIBLE):
                self.mode = "pass"
                await self.send(message)
            else:
                self.start = message
            return
        if kind != "http.response.body" or self.mode == "pass":
            if self.start is not None:  # e.g. trailers or pathsend: no body to judge, so pass
                self.mode = "pass"
                start, self.start = self.start, None
                await self.send(start)
            await self.send(message)
            return
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if self.mode == "undecided":
            await self._decide(body, more)
            return
        assert self.stream is not None
        data = self.stream.chunk(body) if more else self.stream.finish(body)
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def _decide(self, body: bytes, more: bool) -> None:
        assert self.start is not None
        start, self.start = self.start, None
        if not more and len(body) < self.owner.min_bytes:
            self.mode = "pass"
            await self.send(start)
            await self.send({"type": "http.response.body", "body": body, "more_body": False})
            return
        self.mode = "compress"
        if more:
            self.stream = self.owner.compressor(self.coding)
            data = self.stream.chunk(body)
        else:
            data = self.owner.compress_whole(self.coding, body)
        headers = MutableHeaders(raw=list(start.get("headers", [])))
        headers["content-encoding"] = self.coding
        headers.add_vary_header("Accept-Encoding")
        if more:
            del headers["content-length"]
        else:
            headers["content-length"] = str(len(data))
        start_out: dict[str, Any] = {**start, "headers": headers.raw}
        await self.send(start_out)
        await self.send({"type": "http.response.body", "body": data, "more_body": more})
