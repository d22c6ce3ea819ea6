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

from metis_rag.config import Settings
from metis_rag.services import open_services
from metis_rag.store import repo as store_repo
from metis_rag.store.models import Chunk, Document
from metis_rag.tasks import build_backend, repo
from metis_rag.tasks.handlers import build_registry
from metis_rag.tasks.types import TaskSpec
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
    # A 3 s lease took the live worker for dead too at load 10 (it missed a heartbeat), and its
    # tasks ran out of attempts; 8 s is still short enough for a quick test.
    settings = make_settings(database_url=pg_url, tasks=task_settings(
        backend="celery", queue=queue, lease_s=8))
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
            running = [t for t in (await backend.get_many(ids)).values() if t.status == "running"]
            # ... early in their run (before embedding ends), so they cannot finish meanwhile
            mine = [t.id for t in running
                    if t.owner and f":{victim.pid}:" in t.owner and t.progress < 50]
            done = sum(t.status == "completed" for t in (await backend.get_many(ids)).values())
            if mine and done >= 2:
                break
            assert done < N_DOCS, "finished before the kill"
            await asyncio.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        final = await backend.wait(ids, timeout_s=180, poll_s=0.2)
        assert {t.status for t in final.values()} == {"completed"}, workers.tail()
        assert all(final[i].attempts >= 2 for i in mine)  # re-delivered and run again
        assert all(f":{survivor.pid}:" in (final[i].owner or "") for i in mine)
        assert sorted(t.result["status"] for t in final.values()).count("created") <= N_DOCS
    finally:
        await backend.close()
        await engine.dispose()
        workers.stop()
    await check_exactly_once(make_settings(database_url=pg_url), "crash")
