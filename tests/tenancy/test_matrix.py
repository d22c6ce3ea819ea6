"""The cross-tenant matrix: every /api endpoint (read from the app's routes, so a new one cannot
escape) x two tenants x four roles. Zero reads or writes across tenants, zero existence leaks
(a foreign id answers exactly like a missing one), role refusals are 403 `forbidden`."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from metis_rag.api.deps import Access
from metis_rag.app import create_app
from metis_rag.config import Settings
from metis_rag.tenancy.principal import ROLES
from tests.lifespan import lifespan
from tests.uploads import ingest

pytestmark = pytest.mark.slow

TENANTS = ("acme", "globex")
KEYS = {f"key-{t}-{r}-{secrets.token_hex(4)}": {"tenant": t, "role": r}
        for t in TENANTS for r in ROLES}


def key_of(tenant: str, role: str) -> str:
    return next(k for k, g in KEYS.items() if g == {"tenant": tenant, "role": role})


@dataclass
class Seeded:
    """One tenant's objects: what the other tenant must never see or touch."""

    document_id: str = ""
    task_id: str = ""
    conversation_id: str = ""
    key_id: str = ""
    query_id: str = ""  # an agent answer's process log
    secrets: set[str] = field(default_factory=set)  # the content and names of its document

    def ids(self) -> dict[str, str]:
        return {"document_id": self.document_id, "task_id": self.task_id,
                "conversation_id": self.conversation_id, "key_id": self.key_id,
                "query_id": self.query_id}


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Any, Callable[..., httpx.AsyncClient]]]:
    app = create_app(settings)
    async with lifespan(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=("10.9.8.7", 4444))

        def client(tenant: str | None = None, role: str = "admin") -> httpx.AsyncClient:
            headers = {"X-API-Key": key_of(tenant, role)} if tenant else {}
            return httpx.AsyncClient(transport=transport, base_url="http://metis", headers=headers)

        yield app, client


def required_role(route: APIRoute) -> str | None:
    extra = (route.openapi_extra or {}).get("x-metis-role")
    if extra:
        return str(extra)
    pending = list(route.dependant.dependencies)
    while pending:
        dep = pending.pop()
        if isinstance(dep.call, Access):
            return dep.role if hasattr(dep, "role") else dep.call.role
        pending.extend(dep.dependencies)
    return None


OPERATOR_ONLY = ("/api/metrics", "/api/tasks/stats", "/api/cache/stats")
ADMIN_ONLY = ("/api/keys", "/api/audit", "/api/cache")


def policy(method: str, path: str) -> str:
    """The roles as documented: readers ask and read, writers change, admins run their tenant,
    operators see the whole server."""
    if path.startswith(OPERATOR_ONLY):
        return "operator"
    if path.startswith(ADMIN_ONLY):
        return "admin"
    return "reader" if method == "GET" or path == "/api/chat/query" else "writer"


def _walk(routes: list[Any]) -> list[APIRoute]:
    out: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            out.append(route)
        elif hasattr(route, "original_router"):  # FastAPI >= 0.16x includes routers lazily
            out.extend(_walk(route.original_router.routes))
    return out


def api_routes(app: Any) -> list[tuple[str, APIRoute]]:
    out = [(m, r) for r in _walk(app.routes) if r.path.startswith("/api/")
           and r.path != "/api/health" for m in sorted(r.methods)]
    # The walk must see every endpoint the app publishes, or the matrix would miss one.
    published = {(m.upper(), p) for p, ops in app.openapi()["paths"].items()
                 if p.startswith("/api/") and p != "/api/health" for m in ops}
    assert published == {(m, r.path) for m, r in out}
    return out


def body_for(method: str, path: str) -> dict[str, Any]:
    """A valid request body for each route that takes one."""
    if path == "/api/chat/query":
        return {"json": {"message": "What is the secret project codename?", "collection": "docs"}}
    if path == "/api/tasks":
        return {"json": {"type": "noop"}}
    if path == "/api/conversations/{conversation_id}" and method == "PATCH":
        return {"json": {"title": "renamed by the matrix"}}
    if path == "/api/keys" and method == "POST":
        return {"json": {"role": "reader", "name": "matrix"}}
    if path.startswith("/api/documents") and method in ("POST", "PUT"):
        return {"files": {"files": ("matrix.txt", b"Matrix probe " + secrets.token_bytes(8).hex().encode())},
                        "data": {"collection": "docs"}}
    return {}


async def seed(client: Callable[..., httpx.AsyncClient], tenant: str) -> Seeded:
    s = Seeded()
    secret = f"{tenant}-only-{secrets.token_hex(4)}"
    text = (f"The secret project codename of {tenant} is {secret}. It ships in the third "
            "quarter and is owned by the platform team.\n").encode()
    async with client(tenant, "writer") as writer:
        body = await ingest(writer, {f"{tenant}-secret.txt": text}, collection="docs")
        s.document_id = body["results"][0]["document_id"]
        s.task_id = body["task_ids"][0]
        r = await writer.post("/api/chat/query", headers={"X-Metis-Namespace": "shared"},
                              json={"message": "What is the secret project codename?",
                                    "collection": "docs"})
        assert r.status_code == 200, r.text
        assert secret in r.text
        s.conversation_id = r.json()["conversation_id"]
        r = await writer.post("/api/chat/query", json={
            "message": "What is the secret project codename?", "collection": "docs",
            "mode": "agent"})
        assert r.status_code == 200, r.text
        s.query_id = r.json()["agent"]["query_id"]
    async with client(tenant, "admin") as admin:
        r = await admin.post("/api/keys", json={"role": "reader", "name": f"{tenant} probe"})
        assert r.status_code == 201, r.text
        s.key_id = r.json()["id"]
    s.secrets = {secret, f"{tenant}-secret.txt"}
    return s


def fill(path: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, f"{path}: a path parameter the matrix does not know; teach it"
    return path


@pytest.mark.databases
async def test_every_endpoint_every_role_two_tenants(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(api_keys=KEYS)
    async with serving(settings) as (app, client):
        seeded = {t: await seed(client, t) for t in TENANTS}
        routes = api_routes(app)
        undeclared = [f"{m} {r.path}" for m, r in routes if required_role(r) is None]
        assert not undeclared, f"routes without a declared role: {undeclared}"
        off_policy = [f"{m} {r.path}: {required_role(r)}" for m, r in routes
                      if required_role(r) != policy(m, r.path)]
        assert not off_policy, f"routes whose role is not the documented one: {off_policy}"

        for me, other in (("acme", "globex"), ("globex", "acme")):
            foreign = seeded[other].ids()
            missing = {k: secrets.token_urlsafe(16) for k in foreign}
            for role in ROLES:
                async with client(me, role) as c:
                    for method, route in routes:
                        need = required_role(route)
                        kw = body_for(method, route.path)
                        r = await c.request(method, fill(route.path, foreign), **kw)
                        where = f"{me}/{role} {method} {route.path}"
                        if ROLES.index(role) < ROLES.index(need):
                            assert r.status_code == 403, f"{where}: {r.status_code} {r.text}"
                            body = r.json()
                            assert body["code"] == "forbidden" and need in body["message"], where
                            continue
                        assert r.status_code not in (401, 403, 500), f"{where}: {r.text}"
                        # Ids the caller sent may come back (404 messages, its own audit
                        # log); nothing else of the other tenant may.
                        sent = fill(route.path, foreign)
                        echoable = route.path == "/api/audit"
                        for marker in seeded[other].secrets | (
                                set() if echoable else set(foreign.values())):
                            if marker not in sent:
                                assert marker not in r.text, f"{where} leaked {marker}: {r.text}"
                        if "{" in route.path:
                            # Another tenant's object is exactly a missing one: same status,
                            # same body but for the id itself.
                            assert r.status_code == 404, f"{where}: {r.status_code} {r.text}"
                            again = await c.request(method, fill(route.path, missing), **kw)
                            assert again.status_code == 404, where
                            a, b = r.text, again.text
                            for name in foreign:
                                a = a.replace(foreign[name], "ID")
                                b = b.replace(missing[name], "ID")
                            assert a == b, f"{where}: {a} != {b}"

        # Zero writes across tenants: every object of each tenant is still whole.
        for tenant in TENANTS:
            s = seeded[tenant]
            async with client(tenant, "admin") as admin:
                doc = await admin.get(f"/api/documents/{s.document_id}")
                assert doc.status_code == 200 and doc.json()["filename"] == f"{tenant}-secret.txt"
                task = (await admin.get(f"/api/tasks/{s.task_id}")).json()
                assert task["status"] == "completed" and task["tenant"] == tenant
                conv = await admin.get(f"/api/conversations/{s.conversation_id}")
                assert conv.status_code == 200 and len(conv.json()["messages"]) >= 2
                assert conv.json()["title"] != "renamed by the matrix"
                listed = {k["id"] for k in (await admin.get("/api/keys")).json()["items"]}
                assert s.key_id in listed
                # Its answers still cite only its own document.
                r = await admin.post("/api/chat/query", json={
                    "message": "What is the secret project codename?", "collection": "docs"})
                assert {c["document_id"] for c in r.json()["citations"]} <= {
                    d["id"] for d in (await admin.get("/api/documents")).json()["items"]}


async def test_a_shared_namespace_never_shares_answers(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(api_keys=KEYS)
    async with serving(settings) as (_, client):
        globex, acme = await seed(client, "globex"), await seed(client, "acme")
        question = {"message": "Which team owns the secret project, and when does it ship?",
                    "collection": "docs"}
        async with client("globex", "reader") as c:
            r = await c.post("/api/chat/query", headers={"X-Metis-Namespace": "shared"},
                             json=question)
            assert any(m in r.text for m in globex.secrets)
        async with client("acme", "reader") as c:
            # The same question, namespace and collection name: nothing of globex's.
            levels = []
            for _ in range(2):
                r = await c.post("/api/chat/query", headers={"X-Metis-Namespace": "shared"},
                                 json=question)
                assert r.status_code == 200, r.text
                assert all(m not in r.text for m in globex.secrets)
                assert any(m in r.text for m in acme.secrets)
                levels.append(r.json()["cache"]["level"])
            assert levels == [None, "exact"]  # a miss, then its own answer
            # Ids inside bodies too: another tenant's conversation or task answers like a
            # missing one.
            for field_name, path, payload in (
                ("conversation_id", "/api/chat/query",
                 lambda i: {"message": "And then?", "collection": "docs", "conversation_id": i}),
                ("task_id", "/api/tasks", lambda i: {"type": "noop", "depends_on": [i]}),
            ):
                foreign_id = getattr(globex, field_name)
                missing_id = secrets.token_hex(16)
                async with client("acme", "writer") as w:
                    a = await w.post(path, json=payload(foreign_id))
                    b = await w.post(path, json=payload(missing_id))
                assert a.status_code == b.status_code and a.status_code in (404, 422), a.text
                assert a.text.replace(foreign_id, "ID") == b.text.replace(missing_id, "ID")
            # A namespace cannot name another tenant's.
            r = await c.post("/api/chat/query", headers={"X-Metis-Namespace": "globex/shared"},
                             json={"message": "What is the secret project codename?"})
            assert r.status_code == 422 and r.json()["code"] == "invalid_namespace"
        async with client("acme", "admin") as c:
            r = await c.delete("/api/cache", params={"level": "llm"})
            assert r.status_code == 403 and r.json()["code"] == "forbidden"
            assert (await c.delete("/api/cache")).status_code == 200
        async with client("globex", "reader") as c:
            r = await c.post("/api/chat/query", headers={"X-Metis-Namespace": "shared"},
                             json=question)
            assert r.json()["cache"]["level"] == "exact"  # acme's clear left globex's cache
            assert any(m in r.text for m in globex.secrets)


@pytest.mark.databases
async def test_a_task_id_tells_nothing_about_other_tenants(
    make_settings: Callable[..., Settings],
) -> None:
    """A client-chosen id another tenant uses answers exactly like a fresh one (not a 409)."""
    async with serving(make_settings(api_keys=KEYS)) as (_, client):
        taken, fresh = f"job-{secrets.token_hex(4)}", f"job-{secrets.token_hex(4)}"
        async with client("globex", "writer") as globex:
            r = await globex.post("/api/tasks", json={"type": "noop", "id": taken})
            assert r.status_code == 202 and r.json()["id"] == taken
        async with client("acme", "writer") as acme:
            a = await acme.post("/api/tasks", json=[{"type": "noop", "id": taken},
                                                    {"type": "noop", "depends_on": [taken]}])
            b = await acme.post("/api/tasks", json=[{"type": "noop", "id": fresh},
                                                    {"type": "noop", "depends_on": [fresh]}])
            assert a.status_code == b.status_code == 202, a.text
            mine, dependant = a.json()
            assert (mine["id"], mine["tenant"], dependant["dependencies"]) == (taken, "acme", [taken])
            assert [t["status"] for t in a.json()] == [t["status"] for t in b.json()]
            # Its own id is taken now, under the name it chose; globex's task is globex's.
            again = await acme.post("/api/tasks", json={"type": "noop", "id": taken})
            assert again.status_code == 409 and again.json()["code"] == "task_exists"
            assert taken in again.json()["message"] and "acme" not in again.json()["message"]
            assert (await acme.get(f"/api/tasks/{taken}")).json()["tenant"] == "acme"
            for _ in range(200):  # a noop: done in a moment
                if (await acme.get(f"/api/tasks/{taken}")).json()["status"] == "completed":
                    break
                await asyncio.sleep(0.05)
            for action, code in (("cancel", "task_finished"), ("retry", "task_not_retryable")):
                r = await acme.post(f"/api/tasks/{taken}/{action}")  # its own task, by its id
                assert r.status_code == 409 and r.json()["code"] == code, r.text
                assert taken in r.json()["message"] and "acme" not in r.json()["message"]
            r = await acme.get("/api/tasks/no-such-task")
            assert r.status_code == 404 and r.json()["message"] == "Task 'no-such-task' does not exist."
            listed = (await acme.get("/api/tasks")).json()["items"]
            assert {t["id"] for t in listed} >= {taken, fresh} and {t["tenant"] for t in listed} == {"acme"}
        async with client("globex", "reader") as globex:
            r = await globex.get(f"/api/tasks/{taken}")
            assert r.json()["tenant"] == "globex" and r.json()["id"] == taken
            assert (await globex.get(f"/api/tasks/{fresh}")).status_code == 404


async def test_operator_pages_need_an_operator_or_admin_key(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(api_keys=KEYS, auth={"scrape_token": "prom-token"})
    async with serving(settings) as (_, client):
        for path, need in (("/metrics", "operator"), ("/api/metrics/summary", "operator"),
                           ("/docs", "admin"), ("/redoc", "admin"), ("/openapi.json", "admin")):
            async with client() as anonymous:
                assert (await anonymous.get(path)).status_code == 401, path
            for role in ROLES:
                async with client("acme", role) as c:
                    r = await c.get(path)
                if ROLES.index(role) < ROLES.index(need):
                    assert r.status_code == 403 and r.json()["code"] == "forbidden", path
                    assert need in r.json()["message"], path
                else:
                    assert r.status_code == 200, (path, role)
        async with client() as prometheus:
            r = await prometheus.get("/metrics", headers={"Authorization": "Bearer prom-token"})
            assert r.status_code == 200
            assert (await prometheus.get("/docs", headers={
                "Authorization": "Bearer prom-token"})).status_code == 401
        async with client() as anonymous:  # pages with no data in them stay public; they sign in
            for path in ("/", "/dashboard", "/dashboard/dashboard.js"):
                assert (await anonymous.get(path)).status_code == 200, path


# Requests that see or change more than one tenant: an operator's, refused to every other role.
SERVER_WIDE = [
    ("GET", "/api/tasks", {"all_tenants": "true"}),
    ("GET", "/api/audit", {"all_tenants": "true"}),
    ("GET", "/api/audit", {"tenant": "globex"}),
    ("DELETE", "/api/cache", {"all_tenants": "true"}),
    ("DELETE", "/api/cache", {"level": "llm"}),
    ("GET", "/api/tasks/stats", {}),
    ("GET", "/api/cache/stats", {}),
    ("GET", "/api/metrics/summary", {}),
    ("GET", "/metrics", {}),
]


@pytest.mark.databases
async def test_server_wide_views_are_an_operators_and_no_admin_sees_another_tenant(
    make_settings: Callable[..., Settings],
) -> None:
    async with serving(make_settings(api_keys=KEYS)) as (_, client):
        seeded = {t: await seed(client, t) for t in TENANTS}
        globex = seeded["globex"]
        for role in ROLES:
            async with client("acme", role) as c:
                me = (await c.get("/api/me")).json()
                assert me["tenant"] == "acme" and me["role"] == role and me["keys_in_use"]
                for method, path, params in SERVER_WIDE:
                    r = await c.request(method, path, params=params)
                    where = f"acme/{role} {method} {path} {params}"
                    if role != "operator":
                        assert r.status_code == 403 and r.json()["code"] == "forbidden", where
                        assert all(m not in r.text for m in globex.secrets), where
                    else:
                        assert r.status_code == 200, f"{where}: {r.text}"
        async with client("acme", "operator") as op:
            tasks = (await op.get("/api/tasks", params={"all_tenants": "true"})).json()["items"]
            assert {t["tenant"] for t in tasks} == {"acme", "globex"}
            records = (await op.get("/api/audit", params={"tenant": "globex"})).json()["items"]
            assert records and {r["tenant"] for r in records} == {"globex"}
            every = (await op.get("/api/audit", params={"all_tenants": "true"})).json()["items"]
            assert {r["tenant"] for r in every} == {"acme", "globex"}
            # Without asking for every tenant, an operator's listings are its own tenant's.
            own = (await op.get("/api/tasks")).json()["items"]
            assert {t["tenant"] for t in own} == {"acme"}
            made = await op.post("/api/keys", json={"role": "operator", "name": "second op"})
            assert made.status_code == 201, made.text
            op_key_id = made.json()["id"]
        async with client("acme", "admin") as admin:
            # No key is made, revoked or rotated above its maker's role.
            r = await admin.post("/api/keys", json={"role": "operator"})
            assert r.status_code == 403 and r.json()["code"] == "forbidden"
            for method, path in (("DELETE", f"/api/keys/{op_key_id}"),
                                 ("POST", f"/api/keys/{op_key_id}/rotate")):
                r = await admin.request(method, path)
                assert r.status_code == 403 and r.json()["code"] == "forbidden", path
            assert (await admin.post("/api/keys", json={"role": "admin"})).status_code == 201


async def test_without_keys_the_single_tenant_is_an_operator(
    make_settings: Callable[..., Settings],
) -> None:
    async with serving(make_settings()) as (_, client), client() as anonymous:
        me = (await anonymous.get("/api/me")).json()
        assert me == {"tenant": "default", "role": "operator", "key_id": "", "keys_in_use": False}
        assert (await anonymous.get("/api/tasks", params={"all_tenants": "true"})).status_code == 200
