"""/metrics (Prometheus) and /api/metrics/summary (the JSON the /dashboard page draws)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..observability.monitor import summary
from .deps import OperatorDep, ServicesDep

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(services: ServicesDep) -> Response:
    """Every metric in the Prometheus text format."""
    return Response(await services.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/metrics/summary")
async def metrics_summary(services: ServicesDep, who: OperatorDep) -> dict[str, Any]:
    """Latency percentiles, requests/s, cache hit ratios, tasks, CPU and memory over the rolling
    window, the DB pool, LLM usage and recent alerts: what /dashboard draws."""
    await services.metrics.refresh()
    return summary(services.metrics)

