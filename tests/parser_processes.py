"""Watching the parser processes of `ParseSandbox` from a test: which are alive, and when one
has started on the work sent to it (instead of sleeping a guessed time)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import psutil
import pytest

from tests.waiting import eventually


def parser_processes() -> set[int]:
    """This process's live parser processes (not, say, the session's Celery workers' ones);
    a killed one that is not reaped yet (a zombie) counts as gone."""
    found = set()
    for p in psutil.Process().children():
        try:
            if "metis_rag.ingest.parse_worker" in p.cmdline():
                found.add(p.pid)
        except psutil.Error:  # gone meanwhile, or a zombie
            continue
    return found


def _cpu_s(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return float("-inf")  # gone: it is not working on anything
    return float(times.user + times.system)


async def until_working(pids: set[int], cpu_s: float = 0.05, within_s: float = 60) -> None:
    """Returns once one of these idle processes has used `cpu_s` more CPU than when called:
    the parse (or chunking) just sent to it is under way. An idle one blocks on its pipe and
    uses none, so this cannot be met before the work reaches a process."""
    assert pids, "no parser process to watch"
    start = {pid: _cpu_s(pid) for pid in pids}
    await eventually(lambda: any(_cpu_s(pid) - start[pid] >= cpu_s for pid in pids),
                     within_s=within_s, what="no parser process started on its work")


async def cancelled_mid_work(work: Coroutine[Any, Any, Any]) -> None:
    """Runs `work` (a parse or a chunking) on the idle parser processes, cancels it once one of
    them is working on it, and returns when that process is gone (killed, not left running)."""
    before = parser_processes()
    assert before, "no idle parser process to give the work to"
    task = asyncio.create_task(work)
    await until_working(before)  # cancelled mid-work, not before it reached the process
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: not (before & parser_processes()),
                     what="the cancelled work's process is still alive")
