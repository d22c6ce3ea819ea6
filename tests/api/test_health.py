"""/api/health reaches the model itself, not a cached embedding of its probe text."""

from __future__ import annotations

import re

import httpx
import pytest

pytestmark = pytest.mark.slow


async def texts_embedded(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    return sum(float(v) for v in re.findall(r"^metis_embed_texts_total\{[^}]*\} (\S+)$", text, re.M))


async def test_every_health_check_calls_the_model(client: httpx.AsyncClient) -> None:
    before = await texts_embedded(client)
    for _ in range(2):  # the second probe would be an embedding-cache hit if it went through it
        r = await client.get("/api/health")
        assert r.status_code == 200 and r.json()["components"]["embedder"]["status"] == "ok"
    assert await texts_embedded(client) == before + 2
