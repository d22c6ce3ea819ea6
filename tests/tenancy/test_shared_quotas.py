"""Quotas over HTTP with two servers on one database or one Redis: one limit for both; storage
counted at upload time, before any task is queued; a Redis outage mid-run fails no request."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from metis_rag.config import Settings
from tests.cache.conftest import REDIS_URL
from tests.spawn import RedisServer
from tests.tenancy.test_matrix import KEYS, serving

pytestmark = pytest.mark.slow

WINDOW_S = 6000.0  # questions_per_minute=0.01: one question per 6,000 s window


def quota_auth(store: str, redis_url: str = REDIS_URL, **acme: Any) -> dict[str, Any]:
    # The window is a UTC-aligned 6,000 s; a test that starts in its last 30 s waits for the
    # next, so that it cannot straddle two windows.
    left = WINDOW_S - time.time() % WINDOW_S
    if left < 30:
        time.sleep(left + 0.1)
    return {"quota_store": store, "quota_redis_url": redis_url if store == "redis" else "",
            "quota_key_prefix": f"metis-test:{uuid.uuid4().hex}:",
            "tenant_quotas": {"acme": {"questions_per_minute": 0.01, **acme}}}


def upload(*names: str) -> dict[str, Any]:
    return {"files": [("files", (n, f"The file {n} of acme, {uuid.uuid4().hex}.".encode()))
                      for n in names]}


@pytest.mark.databases
@pytest.mark.parametrize("store", ["database", "redis"])
async def test_two_servers_share_one_tenants_quotas(
    make_settings: Callable[..., Settings], tmp_path: Path, database_url: str, store: str,
) -> None:
    url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    auth = quota_auth(store, max_documents=3)
    a, b = (make_settings(data_dir=tmp_path / n, database_url=url, api_keys=KEYS, auth=auth)
            for n in ("a", "b"))
    async with serving(a) as (_, on_a), serving(b) as (_, on_b):
        async with on_a("acme", "writer") as x, on_b("acme", "writer") as y:
            r = await x.post("/api/chat/query", json={"message": "Anyone there?"})
            assert r.status_code != 429, r.text
            r = await y.post("/api/chat/query", json={"message": "Anyone there?"})
            assert r.status_code == 429 and r.json()["details"]["quota"] == "questions_per_minute"
            assert await_ok(await x.post("/api/documents", **upload("one.txt")))
            r = await y.post("/api/documents", **upload("two.txt", "three.txt", "four.txt"))
            assert r.status_code == 413 and r.json()["code"] == "quota_exceeded", r.text
            assert r.json()["details"]["quota"] == "max_documents"
            assert "is ingesting 1 and this adds 3" in r.json()["message"]
            # Two uploads at once on two servers for the last two places: not both get three.
            first, second = await asyncio.gather(
                x.post("/api/documents", **upload("five.txt", "six.txt")),
                y.post("/api/documents", **upload("seven.txt", "eight.txt")))
            assert sorted([first.status_code, second.status_code]) == [202, 413]
        async with on_b("globex", "reader") as g:  # other tenants keep their own (no) limits
            for _ in range(3):
                r = await g.post("/api/chat/query", json={"message": "Anyone there?"})
                assert r.status_code != 429


def await_ok(response: Any) -> bool:
    assert response.status_code == 202, response.text
    return True


async def test_a_redis_outage_fails_no_request_and_keeps_the_limit(
    make_settings: Callable[..., Settings], redis_server: RedisServer,
) -> None:
    settings = make_settings(api_keys=KEYS, auth=quota_auth("redis", redis_server.url))
    async with serving(settings) as (app, client), client("acme", "reader") as c:
        r = await c.post("/api/chat/query", json={"message": "Anyone there?"})
        assert r.status_code != 429, r.text
        redis_server.kill()
        r = await c.post("/api/chat/query", json={"message": "Anyone there?"})
        # Counted in the server meanwhile: the tenant is still over its limit, nothing failed.
        assert r.status_code == 429 and r.json()["details"]["quota"] == "questions_per_minute"
        async with client("globex", "reader") as g:
            r = await g.post("/api/chat/query", json={"message": "Anyone there?"})
            assert r.status_code < 500, r.text
