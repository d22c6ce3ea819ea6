"""/api/cache: statistics of every cache level, and invalidation (rate limited)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request

from ..cache.levels import Caches
from ..errors import Forbidden, ServiceUnavailable
from ..store import repo
from .deps import AdminDep, OperatorDep, ServicesDep, tenant_scope

router = APIRouter(prefix="/api/cache", tags=["cache"])

Level = Literal["exact", "semantic", "retrieval", "llm", "embedding", "document", "tool"]


def _caches(services: ServicesDep) -> Caches:
    if services.caches is None:
        raise ServiceUnavailable("The cache is disabled (METIS_CACHE__ENABLED=false).",
                                 code="cache_disabled")
    return services.caches


@router.get("/stats")
async def cache_stats(services: ServicesDep, who: OperatorDep) -> dict[str, Any]:
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
    all_tenants: Annotated[bool, Query(description="Across tenants (operators); `namespace` "
                                       "is then the stored name, `<tenant>/<name>`.")] = False,
) -> dict[str, Any]:
    """Invalidate: a collection (its version is bumped: every entry of it becomes unreachable
    at once), a namespace, a level, or everything. With API keys, only the key's tenant: its
    collections and namespaces; the llm, embedding and document levels, keyed by content and
    shared by every tenant, and every tenant at once (`all_tenants`) need an operator key."""
    caches = _caches(services)
    services.cache_invalidations.check(request.client.host if request.client else "unknown")
    every_tenant = tenant_scope(who, all_tenants) is None
    out: dict[str, Any] = {"namespace": namespace, "collection": collection, "level": level}
    if collection is not None:
        async with services.sessions() as session, session.begin():
            await repo.invalidate_collection(session, who.tenant, collection)
        out["collection_version_bumped"] = True
        return out
    shared = level in ("llm", "embedding", "document")
    if shared and not who.allows("operator"):
        raise Forbidden(f"The {level} cache is shared by every tenant: clearing it needs an "
                        "operator key (or `metis cache clear` on the server).")
    prefix = None if every_tenant or shared else who.namespace_prefix
    if namespace is not None and not every_tenant:
        namespace = who.namespace(namespace)
    await caches.clear(namespace=namespace, level=level, tenant_prefix=prefix)
    out["cleared"] = True
    return out
