"""`metis tasks list|show|cancel|retry|stats`, `metis worker`, and ingestion as tasks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.progress import Progress, TaskID
from rich.table import Table

from ..config import Settings
from ..errors import MetisError
from ..ingest.pipeline import IngestResult
from ..tasks.base import TaskBackend
from ..tasks.types import STATUSES, TaskOut, TaskSpec
from .common import DataDir, JsonOpt, console, err_console

tasks_app = typer.Typer(help="List, inspect, cancel and retry background tasks.",
                        no_args_is_help=True)
R = TypeVar("R")
SUBMIT_BATCH = 500


async def ingest_as_tasks(
    services: Any, files: list[tuple[Path, str]], collection: str, tags: tuple[str, ...],
    progress: Progress, bar: TaskID, tenant: str = "default",
) -> list[IngestResult]:
    """Submits one ingest_document task per file and follows them to the end."""
    by_path = services.settings.tasks.backend == "embedded"  # the same machine reads the file
    specs = []
    for path, folder in files:
        params = {"collection": collection, "filename": path.name, "folder": folder,
                  "tags": list(tags), "tenant": tenant}
        if by_path:
            params["path"] = str(path.resolve())
        specs.append(TaskSpec("ingest_document", params=params, name=f"ingest {path.name}"[:200],
                              blob=None if by_path else path.read_bytes(), tenant=tenant))
    ids: list[str] = []
    for start in range(0, len(specs), SUBMIT_BATCH):
        ids += [t.id for t in await services.tasks.submit(specs[start:start + SUBMIT_BATCH])]
    chunks = 0

    def on_finished(tasks: list[TaskOut]) -> None:
        nonlocal chunks
        for t in tasks:
            if t.status == "completed" and t.result and t.result["status"] != "duplicate":
                chunks += int(t.result["chunks"])
        progress.update(bar, advance=len(tasks), chunks=chunks)

    done = await services.tasks.wait(ids, timeout_s=float("inf"), poll_s=0.2,
                                     on_finished=on_finished)
    # A document's analysis is a task of its own; this process may be the one that runs it.
    analyses = [t.result["analysis_task_id"] for t in done.values()
                if t.result and t.result.get("analysis_task_id")]
    if analyses:
        await services.tasks.wait(analyses, timeout_s=float("inf"), poll_s=0.2)
    return [_ingest_result(done[i], path.name) for i, (path, _) in zip(ids, files, strict=True)]


def _ingest_result(task: TaskOut, filename: str) -> IngestResult:
    if task.status == "completed" and task.result:
        r = task.result
        return IngestResult(r["filename"], r["status"], r["document_id"], r["chunks"])
    error = task.error.model_dump() if task.error else {"code": task.status, "message": task.status}
    return IngestResult(filename, "failed", error=error)


@asynccontextmanager
async def _backend(settings: Settings) -> AsyncIterator[TaskBackend]:
    """Only the database and a backend that runs nothing: no model, no index to load."""
    from ..store.db import create_engine, migrate
    from ..tasks import build_backend
    from ..tasks.handlers import build_registry

    engine = create_engine(settings)
    try:
        await migrate(engine)
        backend = build_backend(settings, engine, build_registry(settings.tasks), "client")
        await backend.start(None)
        try:
            yield backend
        finally:
            await backend.close()
    finally:
        await engine.dispose()


def _with_backend(data_dir: Path | None, fn: Callable[[TaskBackend], Awaitable[R]]) -> R:
    settings = Settings(data_dir=data_dir) if data_dir else Settings()

    async def main() -> R:
        async with _backend(settings) as backend:
            return await fn(backend)

    try:
        return asyncio.run(main())
    except MetisError as exc:
        err_console.print(f"[red]error[/red] ({exc.code}): {exc.message}")
        raise typer.Exit(2) from None


@tasks_app.command("list")
def tasks_list(
    status: Annotated[str | None, typer.Option(help=", ".join(STATUSES))] = None,
    type: Annotated[str | None, typer.Option("--type")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    data_dir: DataDir = None,
    as_json: JsonOpt = False,
) -> None:
    """Tasks, newest first."""
    if status is not None and status not in STATUSES:
        err_console.print(f"[red]error[/red] (invalid_input): status must be one of {', '.join(STATUSES)}")
        raise typer.Exit(2)
    items, total = _with_backend(data_dir, lambda b: b.list(status=status, type=type, limit=limit,
                                                            offset=offset))
    if as_json:
        console.print_json(json.dumps({"items": [t.model_dump(mode="json") for t in items],
                                       "total": total, "limit": limit, "offset": offset}))
        return
    table = Table("id", "type", "name", "priority", "status", "progress", "attempts", "created")
    for t in items:
        table.add_row(t.id, t.type, t.name, t.priority, t.status, f"{t.progress:.0f}%",
                      str(t.attempts), t.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    console.print(table)
    console.print(f"{len(items)} of {total}")


@tasks_app.command("show")
def tasks_show(task_id: str, data_dir: DataDir = None) -> None:
    """One task as JSON."""
    console.print_json(_with_backend(data_dir, lambda b: b.get(task_id)).model_dump_json())


@tasks_app.command("cancel")
def tasks_cancel(task_id: str, data_dir: DataDir = None) -> None:
    """Cancel a queued task, or ask the process running it to interrupt it."""
    task = _with_backend(data_dir, lambda b: b.cancel(task_id))
    if task.status == "running":
        console.print(f"task {task_id}: cancellation requested; the process running it stops it "
                      "at its next heartbeat")
    else:
        console.print(f"task {task_id}: {task.status}")


@tasks_app.command("retry")
def tasks_retry(task_id: str, data_dir: DataDir = None) -> None:
    """Re-queue a failed or cancelled task."""
    task = _with_backend(data_dir, lambda b: b.retry(task_id))
    console.print(f"task {task_id}: {task.status}")


@tasks_app.command("stats")
def tasks_stats(data_dir: DataDir = None, as_json: JsonOpt = False) -> None:
    """Counts per status, queue depth, throughput, mean wait/run, concurrency, load and alerts."""
    stats = _with_backend(data_dir, lambda b: b.stats())
    if as_json:
        console.print_json(stats.model_dump_json())
        return
    console.print(" ".join(f"{k} {v}" for k, v in stats.counts.items()))
    wait = f"{stats.mean_wait_s:.3f} s" if stats.mean_wait_s is not None else "-"
    run = f"{stats.mean_run_s:.3f} s" if stats.mean_run_s is not None else "-"
    console.print(f"queue depth {stats.queue_depth}; {stats.throughput_per_s:.2f} tasks/s over "
                  f"{stats.window_s:g} s; mean wait {wait}, mean run {run}")
    for w in stats.workers:
        res = w.get("resources") or {}
        console.print(f"{w['kind']} {w['id']}: {w['running']} running of {w['concurrency']}; "
                      f"cpu {res.get('cpu_percent', '-')}%, memory {res.get('memory_percent', '-')}%")
        for alert in (w.get("alerts") or [])[-3:]:
            console.print(f"  [yellow]alert[/yellow] {alert['at']}: {alert['message']}")


def worker(
    concurrency: Annotated[int | None, typer.Option(help="Overrides METIS_TASKS__CONCURRENCY.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Run a Celery worker for METIS_TASKS__BACKEND=celery (install the `tasks` extra)."""
    from ..tasks.worker import run_worker

    settings = Settings(data_dir=data_dir) if data_dir else Settings()
    if concurrency is not None:
        settings.tasks.concurrency = concurrency
    run_worker(settings)
