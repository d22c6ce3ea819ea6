"""Uploading over HTTP under the task contract: 202 with task ids, then poll until they finish."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

FINISHED = {"completed", "failed", "cancelled"}


async def wait_tasks(
    client: httpx.AsyncClient, ids: list[str], timeout_s: float = 120
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    done: dict[str, dict[str, Any]] = {}
    while True:
        for task_id in ids:
            if task_id in done:
                continue
            r = await client.get(f"/api/tasks/{task_id}")
            assert r.status_code == 200, r.text
            if r.json()["status"] in FINISHED:
                done[task_id] = r.json()
        if len(done) == len(ids):
            return done
        assert time.monotonic() < deadline, f"tasks unfinished after {timeout_s} s"
        await asyncio.sleep(0.02)


async def ingest(
    client: httpx.AsyncClient, files: list[tuple[str, bytes]] | dict[str, bytes],
    expect: int = 202, **form: str,
) -> dict[str, Any]:
    """POST /api/documents, wait for its tasks, and fill each result in from its task."""
    items = list(files.items()) if isinstance(files, dict) else files
    r = await client.post("/api/documents", files=[("files", f) for f in items], data=form)
    assert r.status_code == expect, r.text
    body = r.json()
    tasks = await wait_tasks(client, body["task_ids"])
    # Analysis is a low-priority task of its own queued by the ingestion; tests read what it
    # stores (type, topics, filters), so "ingested" means after it too.
    analyses = [t["result"]["analysis_task_id"] for t in tasks.values()
                if t.get("result") and t["result"].get("analysis_task_id")]
    if analyses:
        await wait_tasks(client, analyses)
    for result in body["results"]:
        if result["task_id"] is None:
            assert result["status"] == "duplicate"
            continue
        assert result["status"] == "queued"
        task = tasks[result["task_id"]]
        assert task["status"] == "completed", task
        assert task["type"] == "ingest_document" and task["progress"] == 100
        result.update({k: task["result"][k] for k in ("status", "document_id", "chunks")})
    return body


async def replace(
    client: httpx.AsyncClient, document_id: str, filename: str, data: bytes,
    status: str = "completed",
) -> dict[str, Any]:
    """PUT /api/documents/{id}: 202 with its ingest_document task; wait for it to finish."""
    r = await client.put(f"/api/documents/{document_id}", files={"files": (filename, data)})
    assert r.status_code == 202, r.text
    assert r.json()["type"] == "ingest_document"
    task = (await wait_tasks(client, [r.json()["id"]]))[r.json()["id"]]
    assert task["status"] == status, task
    if (task.get("result") or {}).get("analysis_task_id"):  # as `ingest` does
        await wait_tasks(client, [task["result"]["analysis_task_id"]])
    return task
