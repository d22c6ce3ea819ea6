"""Streaming chat through a real server still streams token by token when the client accepts
compressed responses: the event stream is neither compressed nor buffered."""

from __future__ import annotations

import time

import httpx

from metis_rag.app import create_app
from metis_rag.config import LLMSettings
from metis_rag.devtools.fake_llm import FakeLLMServer
from tests.uploads import ingest

from .conftest import DOC
from .server import ThreadedServer

TOKENS_PER_S = 20


async def test_stream_is_not_buffered_by_compression(make_settings) -> None:  # type: ignore[no-untyped-def]
    answer = " ".join(f"word{i}" for i in range(12)) + " [1]."
    with FakeLLMServer(tokens_per_s=TOKENS_PER_S, answer=answer) as fake:
        llm = LLMSettings(provider="ollama", url=fake.url, model="fake", timeout_s=10)
        settings = make_settings(llm=llm, compression={"min_bytes": 0})
        with ThreadedServer(create_app(settings)) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
                await ingest(c, {"p.md": DOC.encode()})
                arrivals: list[tuple[float, str]] = []
                started = time.perf_counter()
                async with c.stream(
                    "POST", "/api/chat/query",
                    json={"message": "How long is the refund window?", "stream": True},
                    headers={"accept-encoding": "gzip, deflate, br, zstd"},
                ) as r:
                    assert r.status_code == 200
                    assert "content-encoding" not in r.headers
                    assert r.headers["content-type"].startswith("text/event-stream")
                    assert r.headers["x-request-id"]
                    async for line in r.aiter_lines():
                        if line.startswith("event: "):
                            arrivals.append((time.perf_counter() - started, line[7:]))
                # a JSON response of the same server is compressed: the middleware is on
                plain = await c.get("/api/metrics/summary", headers={"accept-encoding": "zstd"})
                assert plain.headers["content-encoding"] == "zstd"

    tokens = [t for t, kind in arrivals if kind == "token"]
    done = next(t for t, kind in arrivals if kind == "done")
    assert len(tokens) == 13
    # The fake paces tokens 50 ms apart: they must reach us spread out, not all at the end.
    assert done - tokens[0] > 0.4
    gaps = [b - a for a, b in zip(tokens, tokens[1:], strict=False)]
    assert sum(g > 0.02 for g in gaps) >= 9, gaps
