"""/api/cache: statistics of every cache level, and invalidation (rate limited)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request

from ..cache.levels import Caches
from ..errors import Forbidden, ServiceUnavailable
from ..store import repo
from .deps import AdminDep, ServicesDep

router = APIRouter(prefix="/api/cache", tags=["cache"])

Level = Literal["exact", "semantic", "retrieval", "llm", "embedding", "document"]


def _caches(services: ServicesDep) -> Caches:
    if services.caches is None:
        raise ServiceUnavailable("The cache is disabled (METIS_CACHE__ENABLED=false).",
                                 code="cache_disabled")
    return services.caches


@router.get("/stats")
async def cache_stats(services: ServicesDep, who: AdminDep) -> dict[str, Any]:
    """Per level: hits, misses, hit ratio, entries, bytes, evictions, errors, mean hit/miss
    latency; LLM calls and tokens saved, estimated cost saved."""
    return await _caches(services).stats()


@router.delete("")
async def clear_cache(
    request: Request,
    services: ServicesDep,
    who: AdminDep,
    namespace: Annotated[str | None, Query(max_length=100)] = None,
    collection: str | None = None,
    level: Level | None = None,
) -> dict[str, Any]:
    """Invalidate: a collection (its version is bumped: every entry of it becomes unreachable
    at once), a namespace, a level, or everything. With API keys, only the key's tenant: its
    collections and namespaces; the llm, embedding and document levels, keyed by content and
    shared by every tenant, are cleared from the CLI."""
    caches = _caches(services)
    services.cache_invalidations.check(request.client.host if request.client else "unknown")
    out: dict[str, Any] = {"namespace": namespace, "collection": collection, "level": level}
    if collection is not None:
        async with services.sessions() as session, session.begin():
            await repo.invalidate_collection(session, who.tenant, collection)
        out["collection_version_bumped"] = True
        return out
    prefix = who.namespace_prefix
    if prefix is not None and level in ("llm", "embedding", "document"):
        raise Forbidden(f"The {level} cache is shared by every tenant: clear it with "
                        "`metis cache clear` on the server.")
    await caches.clear(namespace=who.namespace(namespace) if namespace is not None else None,
                       level=level, tenant_prefix=prefix)
    out["cleared"] = True
    return out
