"""kill -9 mid-ingestion, of the embedded server and of a Celery worker: every document ends
up stored exactly once (zero lost, zero duplicated) and the stores agree with each other."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, text

from metis_rag.config import Settings, TaskSettings
from metis_rag.services import open_services
from metis_rag.store import repo as store_repo
from metis_rag.store.models import Chunk, Document
from metis_rag.tasks import build_backend, repo
from metis_rag.tasks.handlers import build_registry
from metis_rag.tasks.types import TaskOut, TaskSpec
from tests.spawn import free_port
from tests.tasks.conftest import REPO, Workers, task_settings, worker_env

pytestmark = pytest.mark.slow
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()
N_DOCS = 24


def doc(i: int) -> bytes:
    return " ".join(f"Document {i} sentence {j} covers {WORDS[(i + j) % 13]} and "
                    f"{WORDS[(i * j) % 13]} at length." for j in range(80)).encode()


async def check_exactly_once(settings: Settings, collection: str) -> None:
    async with open_services(settings, role="client") as services:  # start-up reconciles the index
        async with services.sessions() as session:
            coll = await store_repo.get_collection(session, "default", collection)
            names = (await session.execute(
                select(Document.filename).where(Document.collection_id == coll.id))).scalars().all()
            assert sorted(names) == sorted(f"doc{i:02d}.txt" for i in range(N_DOCS))  # once each
            per_doc = await session.execute(
                select(Document.chunk_count, func.count(Chunk.id))
                .join(Chunk, Chunk.document_id == Document.id, isouter=True).group_by(Document.id))
            for declared, actual in per_doc:
                assert declared == actual > 0  # never half written
            in_db = await store_repo.chunk_ids_of_collection(session, coll.id)
        assert await services.vectors.ids(coll.id) == in_db


def serve(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "metis_rag", "serve", "--data-dir", str(settings.data_dir),
             "--port", str(port)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "METIS_LOG_LEVEL": "warning"})


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            if httpx.get(url + "/api/tasks/stats", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the server did not start")


def test_kill_9_of_the_server_mid_ingestion(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = make_settings()
    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    server = serve(settings, port, log)
    try:
        wait_up(url, server)
        ids = []
        for start in range(0, N_DOCS, 6):
            files = [("files", (f"doc{i:02d}.txt", doc(i))) for i in range(start, start + 6)]
            r = httpx.post(url + "/api/documents", files=files, data={"collection": "crash"},
                           timeout=60)
            assert r.status_code == 202, r.text
            ids += r.json()["task_ids"]
        while True:  # kill it with some documents stored and some ingesting
            counts = httpx.get(url + "/api/tasks/stats", timeout=10).json()["counts"]
            if counts["completed"] >= 2 and counts["running"] >= 1:
                break
            assert counts["completed"] < N_DOCS, "finished before the kill"
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)
        server.wait()
        unfinished = asyncio.run(_unfinished(settings, ids))
        assert unfinished, "nothing was left to recover"

        server = serve(settings, port, log)
        wait_up(url, server)
        deadline = time.monotonic() + 180
        for task_id in ids:
            while (task := httpx.get(f"{url}/api/tasks/{task_id}", timeout=10).json())["status"] \
                    not in ("completed", "failed", "cancelled"):
                assert time.monotonic() < deadline, task
                time.sleep(0.1)
            assert task["status"] == "completed", task
            assert task["result"]["status"] in ("created", "duplicate")
    finally:
        server.terminate()
        server.wait(timeout=60)
    asyncio.run(check_exactly_once(settings, "crash"))


def _runs_on(task: TaskOut, proc: subprocess.Popen[bytes]) -> bool:
    return task.status == "running" and f":{proc.pid}:" in (task.owner or "")


async def _unfinished(settings: Settings, ids: list[str]) -> list[str]:
    from metis_rag.store.db import create_engine

    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            found = await repo.statuses(conn, ids)
    finally:
        await engine.dispose()
    assert len(found) == len(ids)  # every acknowledged task was durable
    return [i for i, s in found.items() if s != "completed"]


async def test_sigkill_of_a_celery_worker_mid_ingestion(
    pg_url: str, prepared_models: Path, tmp_path: Path, make_settings,  # type: ignore[no-untyped-def]
) -> None:
    from tests.tasks.conftest import clean, create_engine, migrate

    queue = f"metis-kill-{os.getpid()}-{int(time.time())}"
    env = worker_env(tmp_path / "workers", pg_url, queue, prepared_models)
    # The server's sweep re-queues what a dead worker had acknowledged but not yet recorded.
    # The victim runs on this host, so its death is seen at once by its pid (leases.py), not
    # by its lease running out: the lease here only decides when a live worker whose
    # heartbeats are late counts as dead. A 3 s one took the survivor for dead at load 10, and
    # its tasks ran out of attempts; the default (30 s) leaves a stalled survivor more room.
    settings = make_settings(database_url=pg_url, tasks=task_settings(
        backend="celery", queue=queue, lease_s=TaskSettings().lease_s))
    engine = create_engine(settings)
    await migrate(engine)
    await clean(engine)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM collections"))
    (tmp_path / "logs").mkdir()
    workers = Workers(env, [], tmp_path / "logs")
    victim, survivor = workers.start(2)
    backend = build_backend(settings, engine, build_registry(settings.tasks), "server")
    await backend.start(None)
    try:
        from tests.tasks.conftest import wait_for_workers

        await wait_for_workers(pg_url, 2)
        tasks = await backend.submit([TaskSpec(
            "ingest_document", params={"collection": "crash", "filename": f"doc{i:02d}.txt",
                                       "folder": "", "tags": []}, blob=doc(i))
            for i in range(N_DOCS)])
        ids = [t.id for t in tasks]
        while True:  # kill one worker while it runs ingestions, with some already stored
            states = await backend.get_many(ids)
            done = sum(t.status == "completed" for t in states.values())
            assert done < N_DOCS, "finished before the kill"
            if done >= 2 and any(_runs_on(t, victim) for t in states.values()):
                # Stopped, then looked at, then killed: what it holds while stopped is what
                # the kill interrupts. (Between a look and a kill, a busy machine could let
                # the victim finish what it was seen holding: progress is written behind.)
                victim.send_signal(signal.SIGSTOP)
                held = [t.id for t in (await backend.get_many(ids)).values()
                        if _runs_on(t, victim)]
                if held:
                    break
                victim.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        final = await backend.wait(ids, timeout_s=180, poll_s=0.2)
        assert {t.status for t in final.values()} == {"completed"}, workers.tail()
        # What it held was run again by the survivor, unless a commit of its own was already
        # on its way to the database when it stopped (then it completed that task, once).
        rerun = [i for i in held if f":{victim.pid}:" not in (final[i].owner or "")]
        assert rerun, "the kill interrupted nothing"
        assert all(final[i].attempts >= 2 for i in rerun)  # re-delivered and run again
        assert all(f":{survivor.pid}:" in (final[i].owner or "") for i in rerun)
        assert sorted(t.result["status"] for t in final.values()).count("created") <= N_DOCS
    finally:
        await backend.close()
        await engine.dispose()
        workers.stop()
    await check_exactly_once(make_settings(database_url=pg_url), "crash")
