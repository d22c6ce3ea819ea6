"""Uploading, listing, replacing and deleting documents over HTTP."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from metis_rag.app import create_app
from metis_rag.config import Settings
from tests.files import FACTS, MAKERS, md_bytes, txt_bytes
from tests.lifespan import lifespan
from tests.uploads import ingest, replace

pytestmark = [pytest.mark.slow, pytest.mark.databases]


async def test_upload_every_format_and_list(client: httpx.AsyncClient) -> None:
    files = {name: make() for name, make in MAKERS.items()}
    body = await ingest(client, files, collection="handbook", tags="hr,2026", folder="policies")
    assert len(body["task_ids"]) == len(files)
    assert [x["status"] for x in body["results"]] == ["created"] * len(files)
    assert all(x["chunks"] > 0 for x in body["results"])

    listed = (await client.get("/api/documents", params={"collection": "handbook"})).json()
    assert listed["total"] == len(files)
    assert {d["filename"] for d in listed["items"]} == set(files)
    doc = listed["items"][0]
    assert doc["tags"] == ["hr", "2026"] and doc["folder"] == "policies"

    page = (await client.get("/api/documents", params={"limit": 2, "offset": 1})).json()
    assert len(page["items"]) == 2 and page["total"] == len(files)
    by_tag = (await client.get("/api/documents", params={"tag": "nope"})).json()
    assert by_tag["total"] == 0

    pdf = next(d for d in listed["items"] if d["filename"] == "facilities.pdf")
    detail = (await client.get(f"/api/documents/{pdf['id']}", params={"chunks": True})).json()
    assert {c["page"] for c in detail["chunks"]} == {1, 2, 3}


async def test_same_bytes_twice_is_a_duplicate_with_no_new_chunks(
    client: httpx.AsyncClient,
) -> None:
    first = (await ingest(client, {"a.txt": txt_bytes()}))["results"][0]
    again = await ingest(client, {"copy-of-a.txt": txt_bytes()}, expect=200)
    dup = again["results"][0]
    assert dup["status"] == "duplicate" and dup["document_id"] == first["document_id"]
    assert again["task_ids"] == []
    listed = (await client.get("/api/documents")).json()
    assert listed["total"] == 1


async def test_replace_swaps_chunks_and_delete_removes_them(client: httpx.AsyncClient) -> None:
    created = (await ingest(client, {"ops.md": md_bytes()}))["results"][0]
    doc_id = created["document_id"]
    ask = {"message": "When do database backups run?"}
    before = (await client.post("/api/chat/query", json=ask)).json()
    assert "02:00" in before["answer"]

    new = b"# Operations\n\n## Backups\n\nDatabase backups now run hourly at minute 15.\n"
    task = await replace(client, doc_id, "ops.md", new)
    assert task["result"]["status"] == "replaced" and task["result"]["document_id"] == doc_id
    after = (await client.post("/api/chat/query", json=ask)).json()
    assert "hourly" in after["answer"] and "02:00" not in after["answer"]
    old_chunk_ids = {c["chunk_id"] for c in before["citations"]}
    assert not old_chunk_ids & {c["chunk_id"] for c in after["citations"]}

    assert (await client.delete(f"/api/documents/{doc_id}")).status_code == 204
    assert (await client.get(f"/api/documents/{doc_id}")).status_code == 404
    gone = (await client.post("/api/chat/query", json=ask)).json()
    assert gone["citations"] == []


async def chunk_texts(client: httpx.AsyncClient, doc_id: str) -> list[tuple[int, str]]:
    r = await client.get(f"/api/documents/{doc_id}", params={"chunks": True})
    assert r.status_code == 200, r.text
    return [(c["id"], c["text"]) for c in r.json()["chunks"]]


async def test_put_answers_202_and_its_task_swaps_the_chunks(client: httpx.AsyncClient) -> None:
    doc_id = (await ingest(client, {"ops.md": md_bytes()}, tags="ops"))["results"][0]["document_id"]
    old = await chunk_texts(client, doc_id)
    new = b"# Operations\n\nThe on-call rotation changes every Tuesday at noon.\n"
    task = await replace(client, doc_id, "renamed-by-client.md", new)
    analysis = task["result"].pop("analysis_task_id")  # the new content's analysis, queued
    assert task["result"] == {"collection": "default", "filename": "ops.md", "status": "replaced",
                              "document_id": doc_id, "chunks": 1}
    assert (await client.get(f"/api/tasks/{analysis}")).json()["type"] == "analyse_document"
    now = await chunk_texts(client, doc_id)
    assert len(now) == 1 and "Tuesday at noon" in now[0][1]
    assert not {i for i, _ in old} & {i for i, _ in now}, "an old chunk survived the replace"
    doc = (await client.get(f"/api/documents/{doc_id}")).json()
    assert doc["filename"] == "ops.md" and doc["tags"] == ["ops"] and doc["chunk_count"] == 1
    listed = (await client.get("/api/documents")).json()
    assert listed["total"] == 1


async def test_a_failed_replace_leaves_the_old_version_intact(
    make_settings: Callable[..., Settings],
) -> None:
    # The text limit pinned high: derived from a 4-chunk limit, it would refuse the file at
    # upload, and this test is about the task failing.
    app = create_app(make_settings(chunk={"max_chunks_per_document": 4},
                                   parse={"max_text_chars": 1_000_000}))
    async with lifespan(app) as manager, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://metis") as client:
        doc_id = (await ingest(client, {"ops.md": md_bytes()}))["results"][0]["document_id"]
        old = await chunk_texts(client, doc_id)
        # Parses (so the request accepts it) but makes too many chunks: the task fails before
        # writing anything.
        big = " ".join(f"Backups moved to slot {i} of the night." for i in range(400)).encode()
        task = await replace(client, doc_id, "ops.md", big, status="failed")
        assert task["error"]["code"] == "too_many_chunks", task
        assert await chunk_texts(client, doc_id) == old
        ask = {"message": "When do database backups run?"}
        assert "02:00" in (await client.post("/api/chat/query", json=ask)).json()["answer"]


async def test_put_refuses_a_bad_file_before_queueing(client: httpx.AsyncClient) -> None:
    doc_id = (await ingest(client, {"ops.md": md_bytes()}))["results"][0]["document_id"]
    r = await client.put(f"/api/documents/{doc_id}", files={"files": ("ops.md", b"%PDF-1.4 junk")})
    assert r.status_code in (415, 422), r.text
    ingestions = (await client.get("/api/tasks", params={"type": "ingest_document"})).json()
    assert ingestions["total"] == 1  # only the first upload's
    r = await client.put("/api/documents/nope", files={"files": ("ops.md", b"text")})
    assert r.status_code == 404 and r.json()["code"] == "document_not_found"


async def test_tag_and_folder_filters_restrict_retrieval(client: httpx.AsyncClient) -> None:
    await ingest(client, {"security.txt": MAKERS["security.txt"]()}, tags="it", folder="it/sec")
    await ingest(client, {"ops.md": MAKERS["ops.md"]()}, tags="ops", folder="ops")
    q = {"message": FACTS[0][1], "tags": ["ops"]}
    r = (await client.post("/api/chat/query", json=q)).json()
    assert {c["filename"] for c in r["citations"]} == {"ops.md"}
    q = {"message": FACTS[1][1], "folder": "it"}
    r = (await client.post("/api/chat/query", json=q)).json()
    assert {c["filename"] for c in r["citations"]} == {"security.txt"}


async def test_a_folder_filter_is_taken_literally(client: httpx.AsyncClient) -> None:
    """`_` and `%` in a folder's name are no wildcards: "i_" is neither "it" nor "ix"."""
    await ingest(client, {"security.txt": MAKERS["security.txt"]()}, folder="it/sec")
    await ingest(client, {"ops.md": MAKERS["ops.md"]()}, folder="i_/ops")
    for folder, cited in (("i_", {"ops.md"}), ("%", set()), ("it", {"security.txt"})):
        r = (await client.post("/api/chat/query", json={
            "message": FACTS[1][1], "folder": folder, "cache": False})).json()
        assert {c["filename"] for c in r["citations"]} == cited, folder
        listed = (await client.get("/api/documents", params={"folder": folder})).json()
        assert {d["filename"] for d in listed["items"]} == cited, folder
