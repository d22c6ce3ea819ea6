"""/api/tasks over HTTP, uploads as tasks with live progress and cancellation, and the CLI."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from metis_rag.cli import app as cli
from tests.files import MAKERS, write_all
from tests.uploads import ingest, wait_tasks

pytestmark = pytest.mark.slow


def big_text(sentences: int = 2500) -> bytes:
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
    return " ".join(f"Sentence {i} is about {words[i % 12]} and {words[(i * 7) % 12]}."
                    for i in range(sentences)).encode()


async def expect_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["code"] == code and r.json()["message"]


async def test_submit_list_inspect_and_errors(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/tasks", json={"type": "purge_cache", "priority": "high"})
    assert r.status_code == 202, r.text
    task = r.json()
    assert task["status"] == "pending" and task["priority"] == "high"
    done = (await wait_tasks(client, [task["id"]]))[task["id"]]
    assert done["status"] == "completed" and done["progress"] == 100

    batch = [{"id": "first", "type": "noop"}, {"id": "second", "type": "noop", "depends_on": ["first"]}]
    r = await client.post("/api/tasks", json=batch)
    assert r.status_code == 202 and [t["status"] for t in r.json()] == ["pending", "waiting"]
    await wait_tasks(client, ["first", "second"])

    page = (await client.get("/api/tasks", params={"type": "noop", "status": "completed",
                                                   "limit": 1})).json()
    assert page["total"] == 2 and len(page["items"]) == 1 and page["items"][0]["id"] == "second"
    stats = (await client.get("/api/tasks/stats")).json()
    assert stats["counts"]["completed"] == 3 and stats["queue_depth"] == 0
    assert stats["backend"] == "embedded" and stats["concurrency"] >= 1
    assert {"cpu_percent", "memory_percent"} <= set(stats["resources"]) or stats["resources"] == {}

    await expect_error(await client.get("/api/tasks/nope"), 404, "task_not_found")
    await expect_error(await client.post("/api/tasks/nope/cancel"), 404, "task_not_found")
    await expect_error(await client.post(f"/api/tasks/{task['id']}/cancel"), 409, "task_finished")
    await expect_error(await client.post(f"/api/tasks/{task['id']}/retry"), 409, "task_not_retryable")
    await expect_error(await client.get("/api/tasks", params={"status": "lost"}), 422, "invalid_input")
    await expect_error(await client.post("/api/tasks", json={"type": "rm_rf"}), 422, "unknown_task_type")
    cycle = [{"id": "x", "type": "noop", "depends_on": ["y"]},
             {"id": "y", "type": "noop", "depends_on": ["x"]}]
    await expect_error(await client.post("/api/tasks", json=cycle), 422, "dependency_cycle")
    await expect_error(await client.post("/api/tasks", json={"type": "noop", "priority": "asap"}),
                       422, "invalid_input")
    assert (await client.get("/api/tasks")).json()["total"] == 3  # nothing of the bad ones


async def test_upload_runs_as_a_task_with_live_progress_off_the_event_loop(
    client: httpx.AsyncClient,
) -> None:
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:  # the loop that serves HTTP must stay free
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    r = await client.post("/api/documents", files={"files": ("big.txt", big_text())},
                          data={"collection": "big", "priority": "urgent"})
    assert r.status_code == 202, r.text
    task_id = r.json()["task_ids"][0]
    seen: set[float] = set()
    while True:
        task = (await client.get(f"/api/tasks/{task_id}")).json()
        seen.add(task["progress"])
        if task["status"] in ("completed", "failed", "cancelled"):
            break
        await asyncio.sleep(0.02)
    stop.set()
    await tick
    assert task["status"] == "completed" and task["priority"] == "urgent", task
    assert task["result"]["status"] == "created" and task["result"]["chunks"] > 50
    assert any(0 < p < 100 for p in seen), seen
    # Parsing and embedding this file takes seconds of CPU; run on the loop, they would stall it
    # for most of the task. (The bound is relative: this machine is shared and busy.)
    assert max(gaps) < max(0.5, task["run_s"] / 3), (max(gaps), task["run_s"])
    doc = (await client.get(f"/api/documents/{task['result']['document_id']}")).json()
    assert doc["chunk_count"] == task["result"]["chunks"]


async def test_cancelling_an_ingestion_stores_nothing(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/documents", files={"files": ("big.txt", big_text(3000))})
    task_id = r.json()["task_ids"][0]
    while True:
        task = (await client.get(f"/api/tasks/{task_id}")).json()
        if task["status"] == "running" and 0 < task["progress"] < 50:
            break  # parsing or embedding: before its commit point
        assert task["status"] in ("pending", "running"), task
        await asyncio.sleep(0.01)
    r = await client.post(f"/api/tasks/{task_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert (await client.get("/api/documents")).json()["total"] == 0
    r = await client.post(f"/api/tasks/{task_id}/retry")  # the upload was kept: it can run again
    assert r.status_code == 202
    done = (await wait_tasks(client, [task_id]))[task_id]
    assert done["status"] == "completed" and done["result"]["status"] == "created"
    assert (await client.get("/api/documents")).json()["total"] == 1


async def test_reindex_rebuilds_the_index_from_stored_embeddings(client: httpx.AsyncClient) -> None:
    body = await ingest(client, {name: make() for name, make in MAKERS.items()}, collection="hb")
    chunks = sum(r["chunks"] for r in body["results"])
    r = await client.post("/api/tasks", json={"type": "reindex_collection",
                                              "params": {"collection": "hb"}})
    done = (await wait_tasks(client, [r.json()["id"]]))[r.json()["id"]]
    assert done["status"] == "completed" and done["result"] == {"collection": "hb", "vectors": chunks}
    answer = (await client.post("/api/chat/query", json={
        "message": "When do database backups run?", "collection": "hb"})).json()
    assert "02:00" in answer["answer"]


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def test_cli_ingests_through_tasks_and_manages_them(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dd = ["--data-dir", str(make_settings().data_dir)]
    write_all(tmp_path / "docs")
    (tmp_path / "docs" / "broken.pdf").write_bytes(b"%PDF-1.4 junk")
    out = json.loads(run("ingest", str(tmp_path / "docs"), "-c", "hb", "--json", *dd))
    assert out["created"] == 5 and out["failed"] == 1
    listed = json.loads(run("tasks", "list", "--type", "ingest_document", "--json", *dd))
    assert listed["total"] == 6
    assert sorted(t["status"] for t in listed["items"]) == ["completed"] * 5 + ["failed"]
    failed = next(t for t in listed["items"] if t["status"] == "failed")
    assert failed["error"]["code"] == "corrupt_document" and failed["attempts"] == 1
    shown = json.loads(run("tasks", "show", failed["id"], *dd))
    assert shown["params"]["filename"] == "broken.pdf"
    assert "already failed" in run("tasks", "cancel", failed["id"], *dd, code=2)
    # Each created document's analysis is a low-priority task the ingest waited for.
    analyses = json.loads(run("tasks", "list", "--type", "analyse_document", "--json", *dd))
    assert sorted(t["status"] for t in analyses["items"]) == ["completed"] * 5
    stats = json.loads(run("tasks", "stats", "--json", *dd))
    assert stats["counts"]["completed"] == 10 and stats["counts"]["failed"] == 1
    assert "task_not_found" in run("tasks", "show", "nope", *dd, code=2)
    table = run("tasks", "list", *dd)
    assert "11 of 11" in table


@pytest.mark.databases
async def test_what_cannot_be_stored_is_a_422_and_fails_no_other_submission(
    client: httpx.AsyncClient,
) -> None:
    """Params are stored as JSON by orjson, which refuses integers beyond 64 bits and nesting
    deeper than 254. Such a task reached the submitters' group commit and failed there: a 500,
    and every submission that shared the commit failed with it."""
    deep: dict[str, object] = {}
    for _ in range(300):
        deep = {"a": deep}
    for params in ({"x": 2**70}, deep):
        bad, *others = await asyncio.gather(
            client.post("/api/tasks", json={"type": "noop", "params": params}),
            *(client.post("/api/tasks", json={"type": "noop"}) for _ in range(5)))
        await expect_error(bad, 422, "invalid_input")
        assert [r.status_code for r in others] == [202] * 5
    await wait_tasks(client, [r.json()["id"] for r in others])
    # An offset beyond PostgreSQL's bigint, as the other lists refuse it.
    await expect_error(await client.get("/api/audit", params={"offset": 2**64}), 422,
                       "invalid_input")
