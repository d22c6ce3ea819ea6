"""`TaskBackend`: the one interface the API, the CLI and the handlers use, whatever runs tasks.

Implementations: `embedded.EmbeddedBackend` (in-process asyncio engine) and
`celery.CeleryBackend` (Celery workers started with `metis worker`). Both keep every task in
the `tasks` table, which stays the source of truth for status, progress and results.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ..aio import wait_at_most
from ..config import TaskSettings
from ..errors import Conflict, InvalidInput
from ..observability.metrics import TaskSnapshot
from . import ids as task_ids
from . import repo
from .runner import HandlerRegistry
from .scheduler import check_acyclic
from .types import FINISHED, STATUSES, TaskOut, TaskSpec, TaskStats

Clock = Callable[[], float]
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


@dataclass(eq=False, slots=True)
class Watch:
    """A waiter's tasks (`ids`), those of them that ended in this process, and an event set
    on each such end."""
    ids: set[str]
    ended: set[str] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def tell(self, task_id: str) -> None:
        if task_id in self.ids:
            self.ended.add(task_id)
            self.changed.set()


@dataclass(slots=True)
class Submission:
    """Validated rows for a batch of specs, with each task's initial status."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    edges: list[dict[str, Any]] = field(default_factory=list)
    blobs: list[dict[str, Any]] = field(default_factory=list)
    blocked_by: dict[str, set[str]] = field(default_factory=dict)


class TaskBackend(ABC):
    """Submit, inspect, cancel and retry tasks.

    `submit` returns once the tasks are durable; a task starts when its dependencies have
    completed and its start time has come, highest priority first, then oldest. `cancel`
    stops a queued task at once and interrupts a running one (its uncommitted work rolls
    back); cancelling a finished task is a 409. `retry` re-queues a failed or cancelled one.
    """

    name = "base"

    def __init__(
        self, engine: AsyncEngine, settings: TaskSettings, registry: HandlerRegistry,
        *, clock: Clock = time.time,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.registry = registry
        self.clock = clock

    @abstractmethod
    async def start(self, services: Any = None) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def submit(self, specs: Sequence[TaskSpec]) -> list[TaskOut]: ...

    @abstractmethod
    async def cancel(self, task_id: str) -> TaskOut: ...

    @abstractmethod
    async def retry(self, task_id: str) -> TaskOut: ...

    @abstractmethod
    async def runtime(self) -> dict[str, Any]:
        """concurrency, max_concurrency, running, resources, alerts, workers."""

    async def sync(self) -> None:  # noqa: B027 - most backends write through; nothing to do
        """Makes every state change so far visible in the database."""

    async def get(self, task_id: str, tenant: str | None = None) -> TaskOut:
        """`tenant`: another tenant's task is a 404, exactly like a missing one."""
        await self.sync()
        async with self.engine.connect() as conn:
            return await repo.get(conn, task_id, tenant)

    async def get_many(self, ids: Sequence[str]) -> dict[str, TaskOut]:
        await self.sync()
        async with self.engine.connect() as conn:
            return await repo.get_many(conn, ids)

    async def list(
        self, *, status: str | None = None, type: str | None = None, limit: int = 50,
        offset: int = 0, tenant: str | None = None,
    ) -> tuple[list[TaskOut], int]:
        await self.sync()
        async with self.engine.connect() as conn:
            return await repo.list_tasks(conn, status=status, type=type, limit=limit,
                                         offset=offset, tenant=tenant)

    async def stats(self) -> TaskStats:
        await self.sync()
        window = self.settings.stats_window_s
        async with self.engine.connect() as conn:
            counts = await repo.counts(conn)
            done, mean_wait, mean_run = await repo.window_figures(
                conn, repo.to_dt(self.clock() - window)
            )
        rt = await self.runtime()
        return TaskStats(
            backend=self.name,
            counts={s: counts.get(s, 0) for s in
                    ("pending", "scheduled", "waiting", "running", "completed", "failed", "cancelled")},
            queue_depth=counts.get("pending", 0),
            throughput_per_s=round(done / window, 3), window_s=window,
            mean_wait_s=mean_wait, mean_run_s=mean_run, **rt,
        )

    async def snapshot(self) -> TaskSnapshot:
        """Counts by status and the queue of the whole system (the shared `tasks` table, so
        every replica reports the same figures), for the metrics; one grouped count."""
        async with self.engine.connect() as conn:
            counts = await repo.counts(conn)
            oldest = await repo.oldest_created(conn, "pending") if counts.get("pending") else None
        return TaskSnapshot(
            by_status={s: counts.get(s, 0) for s in STATUSES},
            queue_depth={self.settings.queue: counts.get("pending", 0)},
            oldest_pending_s=max(0.0, self.clock() - oldest.timestamp()) if oldest else None,
        )

    async def wait(
        self, ids: Sequence[str], *, timeout_s: float = 600, poll_s: float = 0.05,
        on_finished: Callable[[builtins.list[TaskOut]], None] | None = None,
    ) -> dict[str, TaskOut]:
        """Polls until every task has finished (for the CLI and tests); `on_finished` gets the
        tasks that finished since the previous poll. Each poll reads only unfinished statuses.
        A backend that runs tasks in this process says when one of them ends: the wait wakes
        then, and takes its end from memory; the database is read every `poll_s` for the
        tasks other processes run."""
        deadline = time.monotonic() + timeout_s
        pending = set(ids)
        with self.watch(pending) as watch:
            read = True
            while pending:
                if read:
                    found = await self.dependency_statuses(pending)
                    done = [i for i in pending if found.get(i) in FINISHED]
                else:
                    assert watch is not None
                    done = [i for i in watch.ended if i in pending]
                pending.difference_update(done)
                if done and on_finished is not None:
                    on_finished(list((await self.get_many(done)).values()))
                if not pending:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"tasks still unfinished after {timeout_s} s")
                read = await self._next_end(watch, pending, poll_s)
        return await self.get_many(list(dict.fromkeys(ids)))

    @staticmethod
    async def _next_end(watch: Watch | None, pending: set[str], poll_s: float) -> bool:
        """Waits for one of `pending` to end here, or for `poll_s`: True when it is time to
        read the database."""
        if watch is None:
            await asyncio.sleep(poll_s)
            return True
        if not watch.ended.isdisjoint(pending):  # ended while the caller was busy
            return False
        watch.changed.clear()
        return not await wait_at_most(watch.changed, poll_s)

    @contextlib.contextmanager
    def watch(self, ids: set[str]) -> Iterator[Watch | None]:
        """Tells of these tasks as they end in this process (None: only polling sees them)."""
        yield None

    # -- shared submission logic

    async def dependency_statuses(self, ids: Iterable[str]) -> dict[str, str]:
        await self.sync()
        async with self.engine.connect() as conn:
            return await repo.statuses(conn, ids)

    async def prepare(self, specs: Sequence[TaskSpec], owner: str | None) -> Submission:
        """Validates a batch and builds its rows; dependencies may name tasks of the same batch."""
        now = self.clock()
        ids = [spec_id(s) for s in specs]
        if len(set(ids)) != len(ids):
            raise InvalidInput("Two tasks in the batch have the same id.", code="duplicate_task_id")
        # a dependency names a task of the same tenant: no spelling reaches another tenant's
        graph = {i: list(dict.fromkeys(task_ids.scoped(s.tenant, d) for d in s.depends_on))
                 for i, s in zip(ids, specs, strict=True)}
        check_acyclic(graph)
        outside = {d for deps in graph.values() for d in deps if d not in graph}
        known = await self.dependency_statuses(outside) if outside else {}
        missing = sorted(outside - known.keys())
        if missing:
            raise InvalidInput(f"Unknown dependency: task {task_ids.public(missing[0])!r} does "
                               "not exist.", code="unknown_dependency")
        chosen = [i for i, s in zip(ids, specs, strict=True) if s.id is not None]
        existing = await self.dependency_statuses(chosen) if chosen else {}
        if existing:
            raise Conflict(f"Task {task_ids.public(next(iter(existing)))!r} already exists.",
                           code="task_exists")
        sub = Submission()
        failed_deps: dict[str, str] = {}
        by_id = dict(zip(ids, specs, strict=True))
        for task_id in _topological(graph):
            spec = by_id[task_id]
            self.registry.get(spec.type)  # unknown types are rejected before anything is stored
            blocked = {d for d in graph[task_id]
                       if d in graph or known.get(d) not in ("completed",)}
            bad = [d for d in graph[task_id] if known.get(d) in ("failed", "cancelled")
                   or failed_deps.get(d)]
            status, error, finished = _initial_status(spec, blocked, bad, known, failed_deps, now)
            if status == "failed":
                failed_deps[task_id] = "failed"
            sub.blocked_by[task_id] = blocked if status == "waiting" else set()
            sub.rows.append({
                "id": task_id, "tenant": spec.tenant, "name": (spec.name or spec.type)[:200],
                "type": spec.type,
                "params": spec.params, "priority": int(spec.priority), "status": status,
                "dependencies": graph[task_id],
                "start_at": repo.to_dt(spec.start_at.timestamp()) if spec.start_at else None,
                "timeout_s": float(spec.timeout_s or self._default_timeout(spec.type)),
                "max_retries": (self.settings.default_max_retries if spec.max_retries is None
                                else spec.max_retries),
                "attempts": 0, "progress": 0.0, "message": None, "result": None, "error": error,
                "owner": owner if status not in FINISHED else None, "cancel_requested": False,
                "created_at": repo.to_dt(now), "started_at": None,
                "finished_at": repo.to_dt(now) if finished else None,
                "wait_s": None, "run_s": None, "cpu_s": None, "peak_rss_bytes": None,
            })
            sub.edges.extend({"task_id": task_id, "depends_on": d} for d in graph[task_id])
            if spec.blob is not None:
                sub.blobs.append({"task_id": task_id, "data": spec.blob})
        order = {task_id: i for i, task_id in enumerate(ids)}
        sub.rows.sort(key=lambda row: order[row["id"]])  # callers get their tasks in their order
        return sub

    def _default_timeout(self, type: str) -> float:
        info = self.registry.get(type)
        return info.timeout_s or self.settings.default_timeout_s


def spec_id(spec: TaskSpec) -> str:
    """The stored id: the client's (or a random) id inside the spec's tenant."""
    if spec.id is None:
        return task_ids.scoped(spec.tenant, uuid.uuid4().hex)
    if not _ID_RE.match(spec.id):
        raise InvalidInput(f"Task id {spec.id[:40]!r} is invalid: use 1-32 letters, digits, "
                           "'_' or '-'.", code="invalid_task_id")
    return task_ids.scoped(spec.tenant, spec.id)


def _topological(graph: dict[str, list[str]]) -> list[str]:
    """Batch order with every task after the tasks of the batch it depends on (graph is acyclic)."""
    out: list[str] = []
    seen: set[str] = set()

    def visit(node: str) -> None:
        stack = [(node, iter(graph[node]))]
        seen.add(node)
        while stack:
            current, deps = stack[-1]
            nxt = next((d for d in deps if d in graph and d not in seen), None)
            if nxt is None:
                stack.pop()
                out.append(current)
            else:
                seen.add(nxt)
                stack.append((nxt, iter(graph[nxt])))

    for node in graph:
        if node not in seen:
            visit(node)
    return out


def _initial_status(
    spec: TaskSpec, blocked: set[str], bad: list[str], known: dict[str, str],
    failed_deps: dict[str, str], now: float,
) -> tuple[str, dict[str, str] | None, bool]:
    if bad:
        dep = bad[0]
        why = known.get(dep) or failed_deps.get(dep) or "failed"
        return "failed", {"code": "dependency_failed",
                          "message": f"Dependency {task_ids.public(dep)} {why}."}, True
    if blocked:
        return "waiting", None, False
    if spec.start_at is not None and spec.start_at.timestamp() > now:
        return "scheduled", None, False
    return "pending", None, False
