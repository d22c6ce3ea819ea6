"""/api/tasks: list, inspect, submit, cancel and retry background tasks; engine statistics.

Tasks belong to the submitting key's tenant: another tenant's task is a 404 like a missing one.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ..errors import Forbidden, InvalidInput
from ..tasks.types import STATUSES, StatusName, TaskCreate, TaskOut, TaskPage, TaskSpec, TaskStats
from ..tenancy.principal import Principal
from .deps import AdminDep, ReaderDep, ServicesDep, WriterDep

router = APIRouter(prefix="/api", tags=["tasks"])


@router.get("/tasks", response_model=TaskPage, summary="Tasks, newest first")
async def list_tasks(
    services: ServicesDep,
    who: ReaderDep,
    status: Annotated[StatusName | None, Query(description=", ".join(STATUSES))] = None,
    type: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> TaskPage:
    items, total = await services.tasks.list(status=status, type=type, limit=limit, offset=offset,
                                             tenant=who.tenant)
    return TaskPage(items=items, total=total, limit=limit, offset=offset)


def _spec(task: TaskCreate, who: Principal) -> TaskSpec:
    if who.scoped and "path" in task.params:
        raise Forbidden("Ingesting a server-side path is for the operator's CLI; upload the "
                        "file to /api/documents instead.")
    spec = task.to_spec(who.tenant)
    spec.params = {**spec.params, "tenant": who.tenant}  # handlers work inside this tenant
    return spec


@router.post("/tasks", status_code=202, response_model=TaskOut | list[TaskOut],
             summary="Submit one task, or a batch whose tasks may depend on each other")
async def submit_tasks(
    body: TaskCreate | list[TaskCreate], services: ServicesDep, who: WriterDep
) -> TaskOut | list[TaskOut]:
    if isinstance(body, list) and not body:
        return []  # an empty batch is accepted as it is: nothing to queue
    specs = [_spec(t, who) for t in (body if isinstance(body, list) else [body])]
    batch = {s.id for s in specs if s.id}
    outside = sorted({d for s in specs for d in s.depends_on if d not in batch})
    if outside:
        found = await services.tasks.get_many(outside)
        foreign = [d for d in outside if d in found and found[d].tenant != who.tenant]
        if foreign:  # the very refusal a missing dependency gets: nothing confirms it exists
            raise InvalidInput(f"Unknown dependency: task {foreign[0]!r} does not exist.",
                               code="unknown_dependency")
    created = await services.tasks.submit(specs)
    return created if isinstance(body, list) else created[0]


@router.get("/tasks/stats", response_model=TaskStats,
            summary="Counts per status, queue depth, throughput, wait/run times, load, alerts "
                    "(the whole engine: admins)")
async def task_stats(services: ServicesDep, who: AdminDep) -> TaskStats:
    return await services.tasks.stats()


@router.get("/tasks/{task_id}", response_model=TaskOut)
async def get_task(task_id: str, services: ServicesDep, who: ReaderDep) -> TaskOut:
    return await services.tasks.get(task_id, who.tenant)


@router.post("/tasks/{task_id}/cancel", response_model=TaskOut,
             summary="Cancel a queued task, or interrupt a running one (its work rolls back)")
async def cancel_task(task_id: str, services: ServicesDep, who: WriterDep) -> TaskOut:
    await services.tasks.get(task_id, who.tenant)  # 404 for another tenant's task
    return await services.tasks.cancel(task_id)


@router.post("/tasks/{task_id}/retry", response_model=TaskOut, status_code=202,
             summary="Re-queue a failed or cancelled task")
async def retry_task(task_id: str, services: ServicesDep, who: WriterDep) -> TaskOut:
    await services.tasks.get(task_id, who.tenant)
    return await services.tasks.retry(task_id)
