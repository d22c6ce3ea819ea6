"""Keys made with `metis keys` (hashes in the database), the audit log, and per-tenant quotas."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from metis_rag.cli import app as cli_app
from metis_rag.config import Settings
from metis_rag.devtools.fake_llm import FakeLLMServer
from metis_rag.store.db import create_engine, session_factory
from metis_rag.tenancy.models import ApiKey
from tests.tenancy.test_matrix import key_of, seed, serving
from tests.uploads import ingest
from tests.waiting import eventually

pytestmark = pytest.mark.slow


def cli(settings: Settings, *args: str) -> str:
    result = CliRunner().invoke(cli_app, [*args, "--data-dir", str(settings.data_dir)],
                                catch_exceptions=False,
                                env={"METIS_DATABASE_URL": settings.database_url})
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.databases
async def test_keys_from_the_cli_turn_auth_on_and_revoke_within_the_reload(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(auth={"reload_s": 0.1})
    async with serving(settings) as (_, client):
        async with client() as anonymous:
            assert (await anonymous.get("/api/documents")).status_code == 200  # single tenant
            made = json.loads(await asyncio.to_thread(
                cli, settings, "keys", "create", "--tenant", "acme", "--role", "writer", "--json"))
            key = made["key"]
            assert made["tenant"] == "acme" and key.startswith(f"mts_{made['id']}_")

            async def locked() -> bool:
                return (await anonymous.get("/api/documents")).status_code == 401
            await eventually(locked)  # a key exists: the server now needs one
        headers = {"X-API-Key": key}
        async with client() as c:
            c.headers.update(headers)
            body = await ingest(c, {"acme.txt": b"Acme keeps its spare keys in the blue box."})
            assert body["results"][0]["status"] == "created"
            r = await c.get("/api/keys")
            assert r.status_code == 403 and "admin" in r.json()["message"]

            # Only the hash is stored.
            engine = create_engine(settings)
            try:
                async with session_factory(engine)() as session:
                    rows = (await session.execute(select(ApiKey))).scalars().all()
            finally:
                await engine.dispose()
            assert [r.id for r in rows] == [made["id"]]
            assert all(key not in str(vars(r)) for r in rows) and len(rows[0].key_hash) == 64

            listed = await asyncio.to_thread(cli, settings, "keys", "list", "--json")
            assert [k["id"] for k in json.loads(listed)] == [made["id"]]
            assert key not in listed

            rotated = json.loads(await asyncio.to_thread(
                cli, settings, "keys", "rotate", made["id"], "--json"))
            assert rotated["role"] == "writer" and rotated["tenant"] == "acme"

            async def old_refused() -> bool:
                return (await c.get("/api/documents")).status_code == 401
            await eventually(old_refused)
            c.headers["X-API-Key"] = rotated["key"]
            assert (await c.get("/api/documents")).json()["total"] == 1  # acme's document
            await asyncio.to_thread(cli, settings, "keys", "revoke", rotated["id"])
            await eventually(old_refused)
        async with client() as anonymous:  # the last key revoked locks the server, never opens it
            assert (await anonymous.get("/api/documents")).status_code == 401


async def test_the_audit_log_records_who_did_what_per_tenant(
    make_settings: Callable[..., Settings],
) -> None:
    from tests.tenancy.test_matrix import KEYS

    settings = make_settings(api_keys=KEYS)
    async with serving(settings) as (_, client):
        acme = await seed(client, "acme")  # upload, question, key creation
        async with client("acme", "writer") as writer:
            assert (await writer.delete(f"/api/documents/{acme.document_id}")).status_code == 204
            missing = await writer.delete("/api/documents/nope")
            assert missing.status_code == 404
            assert (await writer.delete("/api/cache")).status_code == 403
        async with client("acme", "admin") as admin:
            assert (await admin.delete("/api/cache", params={"namespace": "n1"})).status_code == 200
            page = (await admin.get("/api/audit", params={"limit": 100})).json()
            actions = [r["action"] for r in page["items"]]
            assert {"document.upload", "question", "key.create", "document.delete",
                    "cache.clear"} <= set(actions)
            assert page["total"] == len(page["items"])
            # Newest first, with actor (the key's id), client address, target and outcome.
            deleted = [r for r in page["items"] if r["action"] == "document.delete"]
            assert {(r["target"], r["outcome"], r["status"]) for r in deleted} == {
                (acme.document_id, "ok", 204), ("nope", "refused", 404)}
            assert all(r["client"] == "10.9.8.7" and r["tenant"] == "acme" for r in deleted)
            writer_id = deleted[0]["actor"]
            assert writer_id and key_of("acme", "writer") not in json.dumps(page)
            refused = (await admin.get("/api/audit", params={"outcome": "refused"})).json()
            assert {r["action"] for r in refused["items"]} == {"document.delete", "cache.clear"}
            by_actor = (await admin.get("/api/audit", params={"actor": writer_id})).json()
            assert all(r["actor"] == writer_id for r in by_actor["items"])
            cleared = (await admin.get("/api/audit", params={"action": "cache.clear",
                                                             "outcome": "ok"})).json()
            assert [r["target"] for r in cleared["items"]] == ["namespace=n1"]
            first = (await admin.get("/api/audit", params={"limit": 2})).json()
            second = (await admin.get("/api/audit", params={"limit": 2, "offset": 2})).json()
            assert first["items"][1]["id"] > second["items"][0]["id"]
            future = (await admin.get("/api/audit", params={"since": "2999-01-01T00:00:00Z"}))
            assert future.json()["total"] == 0
        async with client("globex", "admin") as other:
            assert (await other.get("/api/audit")).json()["total"] == 0
        async with client("acme", "writer") as writer:
            assert (await writer.get("/api/audit")).status_code == 403
    text = await asyncio.to_thread(cli, settings, "audit", "--tenant", "acme", "--action",
                                   "document.delete", "--json")
    assert {r["target"] for r in json.loads(text)} == {acme.document_id, "nope"}


async def test_quotas_refuse_with_their_name_and_retry_after(
    make_settings: Callable[..., Settings],
) -> None:
    from tests.tenancy.test_matrix import KEYS

    settings = make_settings(api_keys=KEYS, auth={"tenant_quotas": {"acme": {
        "max_documents": 1, "questions_per_minute": 2, "max_storage_mb": 0.001}}})
    async with serving(settings) as (_, client):
        async with client("acme", "writer") as c:
            first = await ingest(c, {"a.txt": b"Small enough to fit the quota."})
            doc_id = first["results"][0]["document_id"]
            r = await c.put(f"/api/documents/{doc_id}", files={"files": ("a.txt", b"big " * 500)})
            assert r.status_code == 413 and r.json()["details"]["quota"] == "max_storage_mb"
            r = await c.post("/api/documents", files={"files": ("b.txt", b"Another one.")})
            assert r.status_code == 413 and r.json()["code"] == "quota_exceeded"
            assert "max_documents (1)" in r.json()["message"]
            assert r.json()["details"]["quota"] == "max_documents"
            # The same bytes again is a duplicate, not a new document: no quota spent.
            again = await c.post("/api/documents",
                                 files={"files": ("a.txt", b"Small enough to fit the quota.")})
            assert again.status_code == 200
            statuses = [(await c.post("/api/chat/query", json={"message": "fit?"})).status_code
                        for _ in range(2)]
            assert statuses == [200, 200]
            r = await c.post("/api/chat/query", json={"message": "fit?"})
            assert r.status_code == 429 and r.json()["code"] == "quota_exceeded"
            assert "questions_per_minute" in r.json()["message"]
            assert int(r.headers["retry-after"]) >= 1
        async with client("globex", "writer") as c:  # other tenants keep the defaults
            body = await ingest(c, {"big.txt": b"x y z " * 2000, "c.txt": b"more"})
            assert len(body["results"]) == 2
            for _ in range(3):
                assert (await c.post("/api/chat/query", json={"message": "x?"})).status_code == 200


async def test_llm_tokens_per_day_are_spent_by_model_calls_only(
    make_settings: Callable[..., Settings],
) -> None:
    from metis_rag.config import LLMSettings
    from tests.tenancy.test_matrix import KEYS

    with FakeLLMServer() as server:
        llm = LLMSettings(provider="openai", url=server.url, model="fake", timeout_s=2)
        settings = make_settings(api_keys=KEYS, llm=llm, auth={
            "tenant_quotas": {"acme": {"llm_tokens_per_day": 1}}})
        async with serving(settings) as (_, client), client("acme", "reader") as c:
            first = await c.post("/api/chat/query", json={"message": "Say hi", "use_rag": False})
            assert first.status_code == 200 and first.json()["mode"] == "llm"
            r = await c.post("/api/chat/query", json={"message": "Say more", "use_rag": False})
            assert r.status_code == 429 and "llm_tokens_per_day" in r.json()["message"]
            assert 0 < int(r.headers["retry-after"]) <= 86_400
