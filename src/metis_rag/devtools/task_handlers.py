"""Task handlers for tests, benchmarks and demos (METIS_TASKS__HANDLER_MODULES lists this module).

sleep (cancellable, reports progress), fail (always), flaky (fails its first attempts),
cpu (a pure-Python busy loop in a thread), stamp (records when it started, for latency),
record (writes a row for every run: counts executions), slow_write (an open transaction).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from ..errors import MetisError, PermanentError
from ..tasks.runner import HandlerRegistry, TaskContext


async def sleep(ctx: TaskContext) -> dict[str, Any]:
    seconds = float(ctx.params.get("seconds", 1.0))
    steps = max(1, int(ctx.params.get("steps", 10)))
    label = str(ctx.params.get("label", ""))  # before each progress message
    for i in range(steps):
        await asyncio.sleep(seconds / steps)
        ctx.progress(100 * (i + 1) / steps, f"{label}step {i + 1}/{steps}")
    return {"slept_s": seconds}


async def fail(ctx: TaskContext) -> None:
    if ctx.params.get("permanent"):
        raise PermanentError("This task always fails (permanently).", code="always_fails")
    raise MetisError("This task always fails.", code="always_fails")


async def flaky(ctx: TaskContext) -> dict[str, int]:
    if ctx.attempt <= int(ctx.params.get("failures", 1)):
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    return {"attempt": ctx.attempt}


def cpu(ctx: TaskContext) -> dict[str, int]:
    """Burns CPU in Python for `seconds` (runs in a worker thread, not on the event loop)."""
    deadline = time.perf_counter() + float(ctx.params.get("seconds", 1.0))
    n = 0
    while time.perf_counter() < deadline:
        ctx.check()
        for _ in range(10_000):
            n += 1
    return {"loops": n}


async def stamp(ctx: TaskContext) -> dict[str, float]:
    return {"started": time.time()}


async def record(ctx: TaskContext) -> dict[str, Any]:
    """Inserts one row per run into `task_runs` (created on first use): counts executions."""
    async with ctx.services.engine.begin() as conn:
        await conn.execute(text(
            "CREATE TABLE IF NOT EXISTS task_runs (task_id VARCHAR(100), attempt INTEGER)"))
        await conn.execute(text("INSERT INTO task_runs VALUES (:t, :a)"),
                           {"t": ctx.task_id, "a": ctx.attempt})
    if ctx.params.get("seconds"):
        await asyncio.sleep(float(ctx.params["seconds"]))
    return {"attempt": ctx.attempt}


async def slow_write(ctx: TaskContext) -> dict[str, Any]:
    """Writes a marker row, then holds its transaction open `seconds` before committing: a
    cancel or timeout meanwhile must leave no marker. With `written_file`, creates that file
    once the row is written: a test's sign that the transaction is open (the row itself is
    invisible outside it, and SQLite's write lock keeps progress updates out meanwhile)."""
    async with ctx.services.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS task_marks (task_id VARCHAR(100))"))
    ctx.progress(50, "writing")
    await asyncio.sleep(0.2)  # lets the progress reach the database before the write lock is held
    async with ctx.services.engine.begin() as conn:
        await conn.execute(text("INSERT INTO task_marks VALUES (:t)"), {"t": ctx.task_id})
        if written_file := ctx.params.get("written_file"):
            Path(written_file).touch()
        await asyncio.sleep(float(ctx.params.get("seconds", 5.0)))
    return {"committed": True}


def register(registry: HandlerRegistry) -> None:
    registry.register("slow_write", slow_write)
    registry.register("sleep", sleep)
    registry.register("fail", fail)
    registry.register("flaky", flaky)
    registry.register("cpu", cpu)
    registry.register("stamp", stamp)
    registry.register("record", record)
