"""A NUL character in a filter, a question, a task's or a key's name, a conversation's title or
anywhere in the URL is refused with 422 `invalid_input` on SQLite and PostgreSQL alike:
PostgreSQL text cannot hold one, and asking it to was a 500."""

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
    # Ids in the path and any query parameter: refused before routing (each was a 500 on
    # PostgreSQL, where the lookup failed). Names in a JSON body: by their models.
    conv = (await client.post("/api/chat/query", json={"message": "What is it?"})).json()
    for method, url in (("GET", "/api/documents/a%00b"), ("DELETE", "/api/documents/a%00b"),
                        ("GET", "/api/conversations/a%00b"), ("GET", "/api/tasks/a%00b"),
                        ("POST", "/api/tasks/a%00b/cancel"), ("GET", "/api/queries/a%00b/audit"),
                        ("GET", "/api/tasks?type=a%00b"), ("GET", "/api/audit?actor=a%00b"),
                        ("DELETE", "/api/keys/a%00b")):
        _refused(await client.request(method, url))
    _refused(await client.patch(f"/api/conversations/{conv['conversation_id']}",
                                json={"title": NUL}))
    _refused(await client.post("/api/keys", json={"role": "reader", "name": NUL}))
    # Nothing was stored by the refused requests, and the server still answers.
    listed = (await client.get("/api/documents")).json()
    assert listed["total"] == 1
