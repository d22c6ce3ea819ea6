"""/api/health: the state of each component."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from sqlalchemy import text
from sqlalchemy.pool import QueuePool

from .. import __version__
from ..schemas import ComponentHealth, Health
from ..services import Services
from .deps import ServicesDep

router = APIRouter(prefix="/api", tags=["health"])


@router.get("/health", response_model=Health)
async def health(services: ServicesDep, response: Response) -> Health:
    components: dict[str, ComponentHealth] = {}
    t = time.perf_counter()
    try:
        async with services.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        components["database"] = ComponentHealth(
            status="ok", detail=_database_detail(services),
            latency_ms=round((time.perf_counter() - t) * 1000, 2),
        )
    except Exception as exc:  # a dead database is reported, not raised
        components["database"] = ComponentHealth(status="down", detail=type(exc).__name__)
    t = time.perf_counter()
    try:  # the model itself: a cached embedding would answer even with the model gone
        await services.uncached_embedder.embed(["health check"])
        components["embedder"] = ComponentHealth(
            status="ok", detail=services.embedder.model_id,
            latency_ms=round((time.perf_counter() - t) * 1000, 2),
        )
    except Exception as exc:
        components["embedder"] = ComponentHealth(status="down", detail=type(exc).__name__)
    backend = getattr(services.vectors, "backend", type(services.vectors).__name__)
    components["vector_store"] = ComponentHealth(status="ok", detail=backend)
    components["llm"] = (
        ComponentHealth(status="ok", detail=services.llm.name)
        if services.llm is not None
        else ComponentHealth(status="disabled", detail="extractive answers")
    )
    statuses = {c.status for c in components.values()}
    overall = "down" if "down" in statuses else "ok"
    if components["database"].status == "down" or components["embedder"].status == "down":
        response.status_code = 503
    return Health(status=overall, version=__version__, components=components)


def _database_detail(services: Services) -> str:
    """The backend and its version, plus pool use for a server database (e.g. PostgreSQL)."""
    engine = services.engine
    version = ".".join(str(p) for p in (engine.dialect.server_version_info or ())[:2])
    detail = f"{engine.dialect.name} {version}".strip()
    pool, pg = engine.pool, services.settings.postgres
    if isinstance(pool, QueuePool) and not services.settings.is_sqlite:
        detail += f", {pool.checkedout()} of {pg.pool_size}+{pg.max_overflow} connections in use"
    return detail
