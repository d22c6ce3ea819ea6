"""Per-client rate limits and optional API keys on the HTTP API (the real app)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from metis_rag.app import create_app
from metis_rag.config import RateLimitSettings, Settings
from tests.lifespan import lifespan


@asynccontextmanager
async def serving(settings: Settings, ip: str = "10.1.2.3") -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with lifespan(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=(ip, 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://metis") as client:
            yield client


async def statuses(client: httpx.AsyncClient, n: int, **kw: Any) -> list[int]:
    return [(await client.get("/api/documents", **kw)).status_code for _ in range(n)]


async def test_a_client_over_its_rate_gets_429_with_retry_after(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(ratelimit=RateLimitSettings(inbound_per_minute=6, inbound_burst=3))
    async with serving(settings) as client:
        assert await statuses(client, 3) == [200, 200, 200]
        r = await client.get("/api/documents")
        assert r.status_code == 429
        assert r.json()["code"] == "rate_limited" and "6 a minute" in r.json()["message"]
        assert r.headers["retry-after"] == "10"  # one request every 10 s
        # Uploads are refused before their body is read; health stays open to probes.
        r = await client.post("/api/documents", files={"files": ("a.txt", b"x" * 100_000)})
        assert r.status_code == 429
        assert (await client.get("/api/health")).status_code == 200
        # Another API key is another client with its own budget.
        assert await statuses(client, 3, headers={"X-API-Key": "k2"}) == [200, 200, 200]
        assert await statuses(client, 1, headers={"Authorization": "Bearer k2"}) == [429]


async def test_clients_are_told_apart_by_address(make_settings: Callable[..., Settings]) -> None:
    # One request a minute: no refill can come between two requests, however slow the first
    # (at 60 a minute a first request of over 1 s, seen in CI, had earned the second its token).
    settings = make_settings(ratelimit=RateLimitSettings(inbound_per_minute=1, inbound_burst=1))
    app = create_app(settings)
    async with lifespan(app) as manager:
        def client(ip: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=manager.app, client=(ip, 5555))
            return httpx.AsyncClient(transport=transport, base_url="http://metis")

        # The same server: the second address has a budget of its own.
        async with client("10.0.0.1") as first, client("10.0.0.2") as second:
            assert await statuses(first, 2) == [200, 429]
            assert await statuses(second, 1) == [200]
            assert await statuses(first, 1) == [429]


async def test_with_api_keys_configured_a_request_needs_one(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(api_keys=["s3cret", "other"])
    async with serving(settings) as client:
        r = await client.get("/api/documents")
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        assert "X-API-Key" in r.json()["message"]
        r = await client.get("/api/documents", headers={"X-API-Key": "wrong"})
        assert r.status_code == 401 and r.json()["message"] == "The API key is not valid."
        assert (await client.get("/api/documents", headers={"X-API-Key": "s3cret"})).is_success
        bearer = {"Authorization": "Bearer other"}
        assert (await client.get("/api/documents", headers=bearer)).is_success
        assert (await client.get("/api/health")).status_code == 200


async def test_limits_are_off_by_default(client: httpx.AsyncClient) -> None:
    assert set(await statuses(client, 100)) == {200}
