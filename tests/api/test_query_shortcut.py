"""POST /api/chat/query answered before FastAPI's routing (`ChatQueryShortcut`): bodies that
arrive in pieces, and bodies it hands on to the route with every byte it read."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson

from tests.uploads import ingest


def _pieces(body: bytes, size: int = 7) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(body), size):
            yield body[i:i + size]

    return gen()


async def test_a_body_sent_in_pieces_is_answered_like_a_whole_one(
    client: httpx.AsyncClient,
) -> None:
    await ingest(client, {"notes.txt": b"The rotation of API keys happens every ninety days."})
    question = orjson.dumps({"message": "How often are API keys rotated?"})
    whole = await client.post("/api/chat/query", content=question,
                              headers={"content-type": "application/json"})
    pieces = await client.post("/api/chat/query", content=_pieces(question),
                               headers={"content-type": "application/json"})
    assert whole.status_code == pieces.status_code == 200
    assert pieces.headers["content-type"] == "application/json"
    assert whole.json()["answer"] == pieces.json()["answer"]
    assert pieces.json()["cache"]["level"] == "exact"  # the second asking, from the cache
    assert pieces.json()["citations"] == whole.json()["citations"] != []


async def test_bodies_it_does_not_answer_reach_the_route_intact(
    client: httpx.AsyncClient,
) -> None:
    bad = orjson.dumps({"message": "hello", "top_k": 0})
    refused = await client.post("/api/chat/query", content=_pieces(bad, 3),
                                headers={"content-type": "application/json"})
    assert refused.status_code == 422
    assert refused.json()["code"] == "invalid_input"
    assert "top_k" in refused.json()["message"]  # the route parsed the same bytes
    streamed = await client.post("/api/chat/query", content=_pieces(orjson.dumps(
        {"message": "anything?", "stream": True})), headers={"content-type": "application/json"})
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert "event: done" in streamed.text
