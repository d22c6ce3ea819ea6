"""/api/tasks: list, inspect, submit, cancel and retry background tasks; engine statistics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ..tasks.types import STATUSES, StatusName, TaskCreate, TaskOut, TaskPage, TaskStats
from .deps import ServicesDep

router = APIRouter(prefix="/api", tags=["tasks"])


@router.get("/tasks", response_model=TaskPage, summary="Tasks, newest first")
async def list_tasks(
    services: ServicesDep,
    status: Annotated[StatusName | None, Query(description=", ".join(STATUSES))] = None,
    type: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> TaskPage:
    items, total = await services.tasks.list(status=status, type=type, limit=limit, offset=offset)
    return TaskPage(items=items, total=total, limit=limit, offset=offset)


@router.post("/tasks", status_code=202, response_model=TaskOut | list[TaskOut],
             summary="Submit one task, or a batch whose tasks may depend on each other")
async def submit_tasks(
    body: TaskCreate | list[TaskCreate], services: ServicesDep
) -> TaskOut | list[TaskOut]:
    if isinstance(body, list) and not body:
        return []  # an empty batch is accepted as it is: nothing to queue
    specs = [t.to_spec() for t in (body if isinstance(body, list) else [body])]
    created = await services.tasks.submit(specs)
    return created if isinstance(body, list) else created[0]


@router.get("/tasks/stats", response_model=TaskStats,
            summary="Counts per status, queue depth, throughput, wait/run times, load, alerts")
async def task_stats(services: ServicesDep) -> TaskStats:
    return await services.tasks.stats()


@router.get("/tasks/{task_id}", response_model=TaskOut)
async def get_task(task_id: str, services: ServicesDep) -> TaskOut:
    return await services.tasks.get(task_id)


@router.post("/tasks/{task_id}/cancel", response_model=TaskOut,
             summary="Cancel a queued task, or interrupt a running one (its work rolls back)")
async def cancel_task(task_id: str, services: ServicesDep) -> TaskOut:
    return await services.tasks.cancel(task_id)


@router.post("/tasks/{task_id}/retry", response_model=TaskOut, status_code=202,
             summary="Re-queue a failed or cancelled task")
async def retry_task(task_id: str, services: ServicesDep) -> TaskOut:
    return await services.tasks.retry(task_id)
