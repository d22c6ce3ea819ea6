"""A NUL character in a filter, a question or a task's text is refused with 422 `invalid_input`
on SQLite and PostgreSQL alike: PostgreSQL text cannot hold one, and asking it to was a 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.files import txt_bytes
from tests.uploads import wait_tasks

pytestmark = [pytest.mark.slow, pytest.mark.databases]

NUL = "a\x00b"

LIST_FILTERS = ["tag", "folder", "q", "status", "type", "collection", "doc_type", "topic"]
CHAT_BODIES: list[dict[str, Any]] = [
    {"message": f"What is {NUL}?"},
    {"message": "What is it?", "tags": [NUL]},
    {"message": "What is it?", "folder": NUL},
    {"message": "What is it?", "collection": NUL},
    {"message": "What is it?", "collections": ["default", NUL]},
    {"message": "What is it?", "conversation_id": NUL},
    {"message": "What is it?", "topic": NUL},
]


def _refused(r: httpx.Response, code: str = "invalid_input") -> None:
    assert r.status_code == 422, r.text
    assert r.json()["code"] == code, r.text
    if code == "invalid_input":
        assert "NUL character" in r.json()["message"], r.text


async def test_nul_in_filters_is_422_not_500(db_backend: str, client: httpx.AsyncClient) -> None:
    r = await client.post("/api/documents", files={"files": ("a.txt", txt_bytes())})
    await wait_tasks(client, r.json()["task_ids"])
    for name in LIST_FILTERS:
        plain = await client.get("/api/documents", params={name: "plain"})
        assert plain.status_code in (200, 404), (name, plain.text)  # no NUL: no refusal
        _refused(await client.get("/api/documents", params={name: NUL}))
    for body in CHAT_BODIES:
        _refused(await client.post("/api/chat/query", json=body))
    for field, code in (("folder", "invalid_input"), ("tags", "invalid_input"),
                        ("collection", "invalid_collection")):
        _refused(await client.post("/api/documents", files={"files": ("b.txt", txt_bytes())},
                                   data={field: NUL}), code)
    # A task's text columns: a 422, not a failed batch (a 500, and every submission that
    # shared its commit failed with it). Inside `params` (JSON) a NUL is kept, escaped.
    for body in ({"type": "reindex_collection", "name": NUL}, {"type": NUL},
                 {"type": "reindex_collection", "depends_on": [NUL]}):
        _refused(await client.post("/api/tasks", json=body))
    kept = await client.post("/api/tasks", json={"type": "noop", "params": {"k": NUL}})
    assert kept.status_code == 202, kept.text
    assert (await client.get(f"/api/tasks/{kept.json()['id']}")).json()["params"]["k"] == NUL
    # Nothing was stored by the refused requests, and the server still answers.
    listed = (await client.get("/api/documents")).json()
    assert listed["total"] == 1
