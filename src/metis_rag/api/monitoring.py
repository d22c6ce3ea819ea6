"""/metrics (Prometheus), /api/metrics/summary (the dashboard's JSON) and the /dashboard page."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import NotFound
from ..observability.monitor import summary
from .deps import ServicesDep

router = APIRouter(tags=["monitoring"])

_DASHBOARD_FILES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


@cache
def _dashboard_file(name: str) -> bytes:
    return (resources.files("metis_rag") / "dashboard" / name).read_bytes()


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(services: ServicesDep) -> Response:
    """Every metric in the Prometheus text format."""
    return Response(await services.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/metrics/summary")
async def metrics_summary(services: ServicesDep) -> dict[str, Any]:
    """Latency percentiles, requests/s, cache hit ratios, tasks, CPU and memory over the rolling
    window, the DB pool, LLM usage and recent alerts: what /dashboard draws."""
    await services.metrics.refresh()
    return summary(services.metrics)


@router.get("/dashboard", response_class=Response, include_in_schema=False)
async def dashboard() -> Response:
    return _asset("index.html")


@router.get("/dashboard/{name}", response_class=Response, include_in_schema=False)
async def dashboard_asset(name: str) -> Response:
    return _asset(name)


def _asset(name: str) -> Response:
    media_type = _DASHBOARD_FILES.get(name)
    if media_type is None:  # only the files we ship: no path ever reaches the filesystem
        raise NotFound(f"No dashboard file named {name!r}.")
    return Response(_dashboard_file(name), media_type=media_type,
                    headers={"Cache-Control": "no-cache"})
