"""/api/tasks: list, inspect, submit, cancel and retry background tasks; engine statistics.

Tasks belong to the submitting key's tenant: another tenant's task is a 404 like a missing one,
and ids are scoped per tenant (`tasks.ids`): the API shows and takes the id the client chose.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ..errors import Forbidden
from ..tasks import ids
from ..tasks.types import STATUSES, StatusName, TaskCreate, TaskOut, TaskPage, TaskSpec, TaskStats
from ..tenancy.principal import Principal
from .deps import OperatorDep, ReaderDep, ServicesDep, WriterDep, tenant_scope

router = APIRouter(prefix="/api", tags=["tasks"])


@router.get("/tasks", response_model=TaskPage, summary="Tasks, newest first")
async def list_tasks(
    services: ServicesDep,
    who: ReaderDep,
    status: Annotated[StatusName | None, Query(description=", ".join(STATUSES))] = None,
    type: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    all_tenants: Annotated[bool, Query(description="Every tenant's tasks (operators).")] = False,
) -> TaskPage:
    items, total = await services.tasks.list(status=status, type=type, limit=limit, offset=offset,
                                             tenant=tenant_scope(who, all_tenants))
    return TaskPage(items=[shown(t) for t in items], total=total, limit=limit, offset=offset)


def shown(task: TaskOut) -> TaskOut:
    """The task as its tenant's clients name it."""
    return task.model_copy(update={"id": ids.public(task.id),
                                   "dependencies": [ids.public(d) for d in task.dependencies]})


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
    # ids and dependencies are scoped to the tenant by the backend: none can reach another's
    created = [shown(t) for t in await services.tasks.submit(specs)]
    return created if isinstance(body, list) else created[0]


@router.get("/tasks/stats", response_model=TaskStats,
            summary="Counts per status, queue depth, throughput, wait/run times, load, alerts "
                    "(the whole engine: operators)")
async def task_stats(services: ServicesDep, who: OperatorDep) -> TaskStats:
    return await services.tasks.stats()


@router.get("/tasks/{task_id}", response_model=TaskOut)
async def get_task(task_id: str, services: ServicesDep, who: ReaderDep) -> TaskOut:
    return shown(await services.tasks.get(ids.scoped(who.tenant, task_id), who.tenant))


@router.post("/tasks/{task_id}/cancel", response_model=TaskOut,
             summary="Cancel a queued task, or interrupt a running one (its work rolls back)")
async def cancel_task(task_id: str, services: ServicesDep, who: WriterDep) -> TaskOut:
    stored = ids.scoped(who.tenant, task_id)
    await services.tasks.get(stored, who.tenant)  # 404 for a task this tenant does not have
    return shown(await services.tasks.cancel(stored))


@router.post("/tasks/{task_id}/retry", response_model=TaskOut, status_code=202,
             summary="Re-queue a failed or cancelled task")
async def retry_task(task_id: str, services: ServicesDep, who: WriterDep) -> TaskOut:
    stored = ids.scoped(who.tenant, task_id)
    await services.tasks.get(stored, who.tenant)
    return shown(await services.tasks.retry(stored))
