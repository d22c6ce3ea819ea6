"""Fixtures: the real app on a temp data dir, with its `Services` at hand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from metis_rag.app import create_app
from metis_rag.config import Settings
from metis_rag.services import Services
from tests.lifespan import lifespan
from tests.uploads import ingest

from .helpers import scrape

DOC = (
    "# Refunds\n\nThe refund window is 30 days. Items must be unused and in their box.\n\n"
    "# Shipping\n\nShipping is free for orders over 50 euros. Parcels leave within 2 days.\n"
)


@dataclass
class Served:
    client: httpx.AsyncClient
    services: Services

    async def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        r = await self.client.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        return scrape(r.text)

    async def summary(self) -> dict[str, Any]:
        r = await self.client.get("/api/metrics/summary")
        assert r.status_code == 200
        return dict(r.json())

    async def ingest(self, text: str = DOC, name: str = "policy.md") -> dict[str, Any]:
        return await ingest(self.client, {name: text.encode()})

    async def ask(self, message: str, **body: Any) -> dict[str, Any]:
        r = await self.client.post("/api/chat/query", json={"message": message, **body})
        assert r.status_code == 200, r.text
        return dict(r.json())


@asynccontextmanager
async def serve(settings: Settings,
                prepare: Callable[[FastAPI], None] | None = None,
                raise_app_exceptions: bool = True) -> AsyncIterator[Served]:
    app = create_app(settings)
    if prepare is not None:
        prepare(app)
    async with lifespan(app) as manager:
        # The lifespan's state: the same Services object the routes get.
        services = manager._state["services"]
        transport = httpx.ASGITransport(app=manager.app,
                                        raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://metis") as c:
            yield Served(c, services)


@pytest.fixture
def served_with(make_settings: Callable[..., Settings]) -> Callable[..., Any]:
    def make(**overrides: Any) -> Any:
        return serve(make_settings(**overrides))

    return make


@pytest.fixture
async def served(make_settings: Callable[..., Settings]) -> AsyncIterator[Served]:
    async with serve(make_settings()) as s:
        yield s
