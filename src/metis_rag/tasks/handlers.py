"""The task types Metis registers: ingest_document, analyse_document, reindex_collection,
purge_cache, purge_tasks and noop. Each is idempotent: running it again after a crash changes nothing
more than running it once did."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..agent.analysis_step import analyse_document, analysis_pending
from ..config import TaskSettings
from ..errors import InvalidInput, PermanentError
from ..ingest.pipeline import Upload
from ..store import repo as store_repo
from ..store.index import reconcile
from ..tenancy.principal import DEFAULT_TENANT, Principal
from . import ids as task_ids
from . import repo
from .runner import HandlerRegistry, TaskContext
from .types import Priority, TaskSpec

T = TypeVar("T")
REINDEX_BATCH = 2000


async def past_commit_point(work: Awaitable[T]) -> T:
    """Awaits work that commits: a cancel (or timeout) arriving meanwhile waits for it to finish,
    and the committed result stands, so a task is either wholly done or wholly rolled back."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        result = await asyncio.shield(task)
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()
        return result


async def ingest_document(ctx: TaskContext) -> dict[str, Any]:
    """params: collection, filename, folder, tags, and either the stored upload or `path`;
    `replace` (a document's public id) swaps that document's content, keeping its id."""
    p = ctx.params
    ingestor = ctx.services.ingestor
    ctx.progress(2, "reading")
    if p.get("path"):
        try:
            data = await asyncio.to_thread(Path(p["path"]).read_bytes)
        except OSError as exc:
            raise PermanentError(f"{p['path']} cannot be read: {exc.strerror}.",
                                 code="file_unreadable") from exc
    else:
        data = await ctx.blob()
    upload = Upload(p["filename"], data, folder=p.get("folder", ""), tags=tuple(p.get("tags", ())),
                    content_type=p.get("content_type", ""), replaces=p.get("replace", ""))
    staged = await ingestor.stage([upload], progress=lambda pct, msg: ctx.progress(5 + pct * 0.85, msg),
                                  embed=ctx.services.ingest_embedder.embed)
    ctx.progress(92, "writing")
    analyzer = getattr(ctx.services, "analyzer", None)
    report = await past_commit_point(ingestor.commit(
        p["collection"], staged, _tenant(ctx), analysis_pending=analyzer is not None))
    ctx.services.index_flusher.touch()
    r = report.results[0]
    out = {"collection": p["collection"], "filename": r.filename, "status": r.status,
           "document_id": r.document_id, "chunks": r.chunks}
    if analyzer is not None and r.document_id and (
            r.status in ("created", "replaced")
            or await analysis_pending(ctx.services.sessions, r.document_id)):
        # The document is searchable now. Its analysis (tens of ms of pure Python offline,
        # seconds with an LLM) would hold the CPU the embedder needs for the next uploads:
        # it waits for a free slot as a low-priority task of its own. A "duplicate" still
        # pending is this task's own document after a crash between its commit and here.
        [queued] = await ctx.services.tasks.submit([TaskSpec(
            "analyse_document", {"document_id": r.document_id, "tenant": _tenant(ctx)},
            name=f"analyse {r.filename}"[:200], priority=Priority.low,
            tenant=_tenant(ctx))])
        # The id the submitting tenant's client asks GET /api/tasks/{id} for (it was the
        # stored `<tenant>:<id>`, which that route scopes again: not found for any tenant).
        out["analysis_task_id"] = task_ids.public(queued.id)
    ctx.progress(100, r.status)
    return out


async def analyse_document_task(ctx: TaskContext) -> dict[str, Any]:
    """params: document_id. The analysis of an ingested document (see above)."""
    analyzer = getattr(ctx.services, "analyzer", None)
    if analyzer is None:
        return {"document_id": ctx.params["document_id"], "method": None}
    done = await analyse_document(ctx.services.sessions, analyzer, ctx.params["document_id"])
    return {"document_id": ctx.params["document_id"],
            "method": done.method if done is not None else None}


def _tenant(ctx: TaskContext) -> str:
    """The submitting tenant: the API sets it on every task it accepts."""
    return str(ctx.params.get("tenant") or DEFAULT_TENANT)


def _principal(ctx: TaskContext) -> Principal:
    keyring = getattr(ctx.services, "keyring", None)  # engine tests run without one
    return Principal(_tenant(ctx), "admin", scoped=bool(keyring and keyring.enabled))


async def reindex_collection(ctx: TaskContext) -> dict[str, Any]:
    """Rebuilds a collection's vector index from the embeddings stored with its chunks."""
    services = ctx.services
    name = ctx.params.get("collection") or services.settings.default_collection
    async with services.sessions() as session:
        coll = await store_repo.get_collection(session, _tenant(ctx), name)
        ids = sorted(await store_repo.chunk_ids_of_collection(session, coll.id))
    vectors = services.vectors
    try:
        await vectors.drop_collection(coll.id)
        for start in range(0, len(ids), REINDEX_BATCH):
            async with services.sessions() as session:
                pairs = await store_repo.embeddings_of(session, ids[start:start + REINDEX_BATCH])
            if pairs:
                matrix = np.vstack([np.frombuffer(e, dtype="<f4") for _, e in pairs])
                await vectors.add(coll.id, [i for i, _ in pairs], matrix)
            done = min(len(ids), start + REINDEX_BATCH)
            ctx.progress(100 * done / max(1, len(ids)), f"{done}/{len(ids)} vectors")
        await vectors.flush()
    except asyncio.CancelledError:
        # Roll back to a whole index: put back whatever the database has and the index lacks.
        await past_commit_point(reconcile(services.sessions, vectors))
        raise
    return {"collection": name, "vectors": len(ids)}


async def purge_cache(ctx: TaskContext) -> dict[str, Any]:
    """params: namespace, level, or collection (drops that collection's cached answers)."""
    services = ctx.services
    p = ctx.params
    if services.caches is None:
        raise PermanentError("The cache is disabled.", code="cache_disabled")
    if p.get("collection"):
        async with services.sessions() as session, session.begin():
            await store_repo.invalidate_collection(session, _tenant(ctx), p["collection"])
        return {"collection": p["collection"]}
    who = _principal(ctx)
    namespace = who.namespace(p["namespace"]) if p.get("namespace") else None
    if who.namespace_prefix is not None and p.get("level") in ("llm", "embedding", "document"):
        raise PermanentError("That cache level is shared by every tenant: clear it with "
                             "`metis cache clear`.", code="forbidden")
    await services.caches.clear(namespace=namespace, level=p.get("level"),
                                tenant_prefix=who.namespace_prefix)
    return {"namespace": p.get("namespace"), "level": p.get("level")}


async def purge_tasks(ctx: TaskContext) -> dict[str, Any]:
    """Deletes finished tasks older than `older_than_days` (default METIS_TASKS__KEEP_FINISHED_DAYS)."""
    services = ctx.services
    days = float(ctx.params.get("older_than_days", services.settings.tasks.keep_finished_days))
    if days < 0:
        raise InvalidInput("older_than_days must be >= 0.")
    before = repo.to_dt(services.tasks.clock()) - timedelta(days=days)
    async with services.engine.begin() as conn:
        who = _principal(ctx)
        deleted = await repo.purge_finished(conn, before, who.tenant if who.scoped else None)
    return {"deleted": deleted}


async def noop(ctx: TaskContext) -> None:
    """Does nothing: measures the engine itself."""


def build_registry(settings: TaskSettings) -> HandlerRegistry:
    registry = HandlerRegistry()
    registry.register("ingest_document", ingest_document)
    registry.register("analyse_document", analyse_document_task)
    registry.register("reindex_collection", reindex_collection)
    registry.register("purge_cache", purge_cache)
    registry.register("purge_tasks", purge_tasks)
    registry.register("noop", noop)
    for name in settings.handler_modules:
        importlib.import_module(name).register(registry)
    return registry
