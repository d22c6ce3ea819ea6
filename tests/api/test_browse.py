"""What the web page browses with: collections with counts, a searched, filtered and paginated
document list, facets, and conversations listed, renamed and deleted (on SQLite and
PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from metis_rag.app import create_app
from metis_rag.config import Settings
from tests.lifespan import lifespan
from tests.uploads import ingest

pytestmark = pytest.mark.databases

ALPHA = b"Alpha report. The refund window is 30 days for unused items.\n"
BETA = b"Beta notes. Shipping is free for orders over 50 euros.\n"
GAMMA = b"Gamma memo. The office cat is called Pixel and sleeps on the printer.\n"


async def _seed(client: httpx.AsyncClient) -> None:
    await ingest(client, {"alpha-report.txt": ALPHA}, collection="handbook", tags="policy,money",
                 folder="hr/2024")
    await ingest(client, {"beta-notes.md": BETA}, collection="handbook", tags="policy",
                 folder="ops")
    await ingest(client, {"gamma.txt": GAMMA}, collection="misc")
    r = await client.post("/api/chat/query", json={"message": "x", "collection": "misc"})
    assert r.status_code == 200  # leaves "misc" non-empty and a conversation behind


async def test_collections_have_their_counts(client: httpx.AsyncClient) -> None:
    await _seed(client)
    r = await client.get("/api/collections")
    assert r.status_code == 200, r.text
    items = {c["name"]: c for c in r.json()["items"]}
    assert set(items) == {"handbook", "misc"}
    assert items["handbook"]["documents"] == 2 and items["misc"]["documents"] == 1
    assert items["handbook"]["size_bytes"] == len(ALPHA) + len(BETA)
    assert items["handbook"]["chunks"] >= 2 and items["handbook"]["failed"] == 0


async def test_documents_are_searched_filtered_and_paginated(client: httpx.AsyncClient) -> None:
    await _seed(client)

    async def names(**params: str | int) -> list[str]:
        r = await client.get("/api/documents", params=params)
        assert r.status_code == 200, r.text
        return [d["filename"] for d in r.json()["items"]]

    assert sorted(await names()) == ["alpha-report.txt", "beta-notes.md", "gamma.txt"]
    assert await names(q="REPORT") == ["alpha-report.txt"]
    assert await names(q="%") == []  # LIKE wildcards are searched as text
    assert await names(q="_") == []
    assert sorted(await names(collection="handbook")) == ["alpha-report.txt", "beta-notes.md"]
    assert await names(collection="handbook", tag="money") == ["alpha-report.txt"]
    assert await names(folder="hr") == ["alpha-report.txt"]  # the folder and below it
    assert await names(folder="h") == []
    assert await names(type="text/markdown") == ["beta-notes.md"]
    first = await client.get("/api/documents", params={"limit": 2, "offset": 0})
    second = await client.get("/api/documents", params={"limit": 2, "offset": 2})
    assert first.json()["total"] == 3 and second.json()["total"] == 3
    pages = [d["id"] for d in first.json()["items"] + second.json()["items"]]
    assert len(pages) == len(set(pages)) == 3
    missing = await client.get("/api/documents", params={"collection": "nope"})
    assert missing.status_code == 404 and missing.json()["code"] == "collection_not_found"


async def test_facets_count_documents(client: httpx.AsyncClient) -> None:
    await _seed(client)
    r = await client.get("/api/facets", params={"collection": "handbook"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tags"] == [{"value": "policy", "documents": 2}, {"value": "money", "documents": 1}]
    assert sorted((f["value"], f["documents"]) for f in body["folders"]) == [("hr/2024", 1),
                                                                             ("ops", 1)]
    assert body["statuses"] == [{"value": "ready", "documents": 2}]
    everywhere = (await client.get("/api/facets")).json()
    assert sum(f["documents"] for f in everywhere["folders"]) == 3


async def test_conversations_are_listed_renamed_and_deleted(client: httpx.AsyncClient) -> None:
    await _seed(client)
    ask = {"message": "How long is the refund window?", "collection": "handbook"}
    conv = (await client.post("/api/chat/query", json=ask)).json()["conversation_id"]
    r = await client.post("/api/chat/query", json={**ask, "conversation_id": conv,
                                                    "message": "Is shipping free?"})
    assert r.status_code == 200
    listed = (await client.get("/api/conversations")).json()
    assert listed["total"] == 2
    mine = next(c for c in listed["items"] if c["id"] == conv)
    assert mine["collection"] == "handbook" and mine["messages"] == 4
    assert mine["title"].startswith("How long is the refund window")

    r = await client.patch(f"/api/conversations/{conv}", json={"title": "Refunds"})
    assert r.status_code == 200, r.text
    assert r.json()["title"] == "Refunds" and r.json()["messages"] == 4
    assert (await client.get(f"/api/conversations/{conv}")).json()["title"] == "Refunds"
    bad = await client.patch(f"/api/conversations/{conv}", json={"title": ""})
    assert bad.status_code == 422

    assert (await client.delete(f"/api/conversations/{conv}")).status_code == 204
    gone = await client.get(f"/api/conversations/{conv}")
    assert gone.status_code == 404 and gone.json()["code"] == "conversation_not_found"
    assert (await client.delete(f"/api/conversations/{conv}")).status_code == 404
    assert [c["id"] for c in (await client.get("/api/conversations")).json()["items"]] != [conv]
    assert (await client.get("/api/conversations")).json()["total"] == 1


async def test_me_without_keys_is_the_single_tenant_operator(client: httpx.AsyncClient) -> None:
    # Without keys the one tenant may do everything, server-wide views included.
    r = await client.get("/api/me")
    assert r.status_code == 200
    assert r.json() == {"tenant": "default", "role": "operator", "key_id": "",
                        "keys_in_use": False}


async def test_renames_and_deletes_of_conversations_are_audited(
    make_settings: Callable[..., Settings],
) -> None:
    keys = {"browse-writer-key-1": {"tenant": "acme", "role": "writer"},
            "browse-admin-key-1": {"tenant": "acme", "role": "admin"}}
    app = create_app(make_settings(api_keys=keys))
    async with lifespan(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://metis",
                                     headers={"X-API-Key": "browse-writer-key-1"}) as writer:
            await ingest(writer, {"alpha.txt": ALPHA}, collection="handbook")
            conv = (await writer.post("/api/chat/query", json={
                "message": "How long is the refund window?", "collection": "handbook"})
            ).json()["conversation_id"]
            assert (await writer.get("/api/me")).json()["role"] == "writer"
            assert (await writer.patch(f"/api/conversations/{conv}",
                                       json={"title": "Refunds"})).status_code == 200
            assert (await writer.delete(f"/api/conversations/{conv}")).status_code == 204
        async with httpx.AsyncClient(transport=transport, base_url="http://metis",
                                     headers={"X-API-Key": "browse-admin-key-1"}) as admin:
            items = (await admin.get("/api/audit")).json()["items"]
    done = [(a["action"], a["target"], a["status"]) for a in items
            if a["action"].startswith("conversation.")]
    assert sorted(done) == [("conversation.delete", conv, 204),
                            ("conversation.rename", conv, 200)]
