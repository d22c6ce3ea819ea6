"""Hostile and odd input over HTTP: refused at once with a clear code, nothing stored."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from metis_rag.app import create_app
from metis_rag.config import Settings
from tests.files import txt_bytes
from tests.hostile import docx_billion_laughs, docx_huge_xml, markdown_emphasis_storm, pdf_plain
from tests.parser_processes import parser_processes, until_working
from tests.uploads import ingest

ISO_WITH_ZONE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


async def _nothing_stored(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/documents")).json()["total"] == 0
    assert (await client.get("/api/tasks")).json()["total"] == 0


@pytest.mark.parametrize("name", ["report.txt", "report.md", "report.html"])
async def test_a_pdf_renamed_as_text_is_refused_as_a_mismatch(client: httpx.AsyncClient, name):
    r = await client.post("/api/documents", files=[("files", (name, pdf_plain()))])
    assert r.status_code == 415, r.text
    assert r.json()["code"] == "content_mismatch" and name in r.json()["message"]
    await _nothing_stored(client)


async def test_a_content_type_that_contradicts_the_name_is_refused(client: httpx.AsyncClient):
    r = await client.post("/api/documents",
                          files=[("files", ("notes.txt", b"plain words", "application/pdf"))])
    assert r.status_code == 415 and r.json()["code"] == "content_mismatch"
    assert "application/pdf" in r.json()["message"]


@pytest.mark.parametrize(("name", "make", "codes"), [
    ("bomb.docx", lambda: docx_huge_xml(300), {"archive_too_large", "compression_ratio"}),
    ("laughs.docx", docx_billion_laughs, {"unsafe_xml"}),
])
async def test_a_zip_bomb_is_refused_and_nothing_is_stored(client: httpx.AsyncClient, name, make,
                                                           codes):
    r = await client.post("/api/documents",
                          files=[("files", ("fine.txt", txt_bytes())), ("files", (name, make()))])
    assert r.status_code == 422, r.text
    assert r.json()["code"] in codes and name in r.json()["message"]
    await _nothing_stored(client)


async def test_more_than_100_files_is_a_human_error(client: httpx.AsyncClient) -> None:
    files = [("files", (f"n{i}.txt", b"x")) for i in range(101)]
    r = await client.post("/api/documents", files=files)
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "too_many_files" and "100 files" in body["message"]
    assert "400" not in body["message"] and "Maximum" not in body["message"]


async def test_a_broken_multipart_body_is_a_human_error(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/documents", content=b"--x\r\nContent-Disposition: form-data\r\n\r\n",
                          headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "invalid_multipart"
    assert not re.search(r"\d{3}:|Invalid multipart data\.\.|Exception", body["message"])


async def test_an_empty_task_batch_is_answered_at_once(client: httpx.AsyncClient) -> None:
    r = await asyncio.wait_for(client.post("/api/tasks", json=[]), timeout=10)
    assert r.status_code == 202 and r.json() == []


@pytest.mark.parametrize("message", ["   ", "\t\n ", "\u200b \u2003"])
async def test_a_question_of_only_spaces_is_invalid(client: httpx.AsyncClient, message) -> None:
    r = await client.post("/api/chat/query", json={"message": message})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "invalid_input" and "empty" in body["message"]


@pytest.mark.slow
@pytest.mark.databases
async def test_more_than_100_tags_is_a_human_error(client: httpx.AsyncClient) -> None:
    """A document carries at most 100 tags, so a question filters by at most 100: each is one
    more subquery, and 20,000 of them were a 500 on PostgreSQL."""
    many = [f"t{i}" for i in range(101)]
    r = await client.post("/api/chat/query", json={"message": "What is it?", "tags": many})
    assert r.status_code == 422 and r.json()["code"] == "invalid_input", r.text
    r = await client.post("/api/documents", files=[("files", ("a.txt", txt_bytes()))],
                          data={"tags": ",".join(many)})
    assert r.status_code == 422 and "at most 100 tags" in r.json()["message"], r.text
    await _nothing_stored(client)
    r = await client.post("/api/chat/query", json={"message": "What is it?", "tags": many[:100]})
    assert r.status_code == 200, r.text


@pytest.mark.databases
async def test_document_timestamps_carry_a_time_zone(client: httpx.AsyncClient) -> None:
    body = await ingest(client, {"a.txt": txt_bytes()})
    doc_id = body["results"][0]["document_id"]
    listed = (await client.get("/api/documents")).json()["items"][0]
    detail = (await client.get(f"/api/documents/{doc_id}")).json()
    for doc in (listed, detail):
        for field in ("created_at", "updated_at"):
            assert ISO_WITH_ZONE.match(doc[field]), doc[field]
    answer = (await client.post("/api/chat/query", json={"message": "API key rotation?"})).json()
    conv = (await client.get(f"/api/conversations/{answer['conversation_id']}")).json()
    assert ISO_WITH_ZONE.match(conv["created_at"])
    assert all(ISO_WITH_ZONE.match(m["created_at"]) for m in conv["messages"])


async def test_a_client_that_goes_away_abandons_its_parse(settings: Settings) -> None:
    """Raw ASGI: the body arrives, then the client disconnects while the file is parsed."""
    from tests.lifespan import lifespan

    boundary = "hostileboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"storm.md\"\r\nContent-Type: text/markdown\r\n\r\n").encode()
    body += markdown_emphasis_storm(mb=4) + f"\r\n--{boundary}--\r\n".encode()
    # One parser process: once the warm-up is through it, it is the one that gets the storm.
    app = create_app(settings.model_copy(update={
        "parse": settings.parse.model_copy(update={"workers": 1})}))
    async with lifespan(app) as manager:
        services = manager._state["services"]
        sandbox = services.ingestor._parser
        await sandbox.parse(b"warm up", "warm.txt")  # a parser process is waiting
        (idle,) = parser_processes()
        sent: list[dict[str, Any]] = []
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            await until_working({idle})  # the parse (over 1 s) is under way
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/api/documents", "raw_path": b"",
                 "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
                 "server": ("metis", 80), "client": ("127.0.0.1", 1234),
                 "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
                             (b"content-length", str(len(body)).encode())]}
        await asyncio.wait_for(manager.app(scope, receive, send), timeout=60)
        assert sandbox.stats["abandoned"] == 1, sandbox.stats
        assert sent[0]["status"] == 499
        async with services.sessions() as session:
            from sqlalchemy import func, select

            from metis_rag.store.models import Document
            assert (await session.execute(select(func.count(Document.id)))).scalar() == 0


async def test_a_file_past_the_chunk_limit_fails_its_task_clearly(make_settings) -> None:
    from metis_rag.config import ChunkSettings
    from tests.lifespan import lifespan
    from tests.uploads import wait_tasks

    # The text limit pinned: derived from this chunk limit it would refuse the file at upload.
    app = create_app(make_settings(chunk=ChunkSettings(max_chunks_per_document=3),
                                   parse={"max_text_chars": 1_000_000}))
    async with lifespan(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://metis") as client:
            text = " ".join(f"Sentence {i} of a long file." for i in range(400)).encode()
            r = await client.post("/api/documents", files=[("files", ("long.txt", text))])
            assert r.status_code == 202, r.text
            task = (await wait_tasks(client, r.json()["task_ids"]))[r.json()["task_ids"][0]]
            assert task["status"] == "failed", task
            assert task["error"]["code"] == "too_many_chunks"
            assert "long.txt" in task["error"]["message"]
            assert (await client.get("/api/documents")).json()["total"] == 0
