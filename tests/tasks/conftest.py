"""Task backends for the contract suite: embedded on SQLite and on PostgreSQL, and Celery with
two real `metis worker` processes on RabbitMQ and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from metis_rag.config import Settings, TaskSettings
from metis_rag.store.db import create_engine, migrate
from metis_rag.tasks import build_backend
from metis_rag.tasks.base import TaskBackend
from metis_rag.tasks.handlers import build_registry

HANDLERS = ["metis_rag.devtools.task_handlers"]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
CONCURRENCY = 2
REPO = Path(__file__).resolve().parents[2]


def task_settings(**overrides: Any) -> TaskSettings:
    # No load shedding here: the test machine is busy, and the monitor has its own tests.
    base: dict[str, Any] = {"concurrency": CONCURRENCY, "min_concurrency": CONCURRENCY,
                                "handler_modules": HANDLERS, "retry_base_s": 0.05, "retry_max_s": 0.5,
                                "heartbeat_s": 0.5}
    return TaskSettings(**{**base, **overrides})


async def create_database(name: str) -> str:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _fresh_database() -> AsyncIterator[str]:
    name = f"metis_tasks_{uuid.uuid4().hex[:10]}"
    url = await create_database(name)
    yield url
    await drop_database(name)


@pytest.fixture(scope="session")
async def pg_url() -> AsyncIterator[str]:
    async for url in _fresh_database():
        yield url


@pytest.fixture(scope="session")
async def celery_pg_url() -> AsyncIterator[str]:
    """The session's Celery workers get a database of their own."""
    async for url in _fresh_database():
        yield url


@dataclass
class Workers:
    """Real `metis worker` processes on one queue and database."""

    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]]
    logs: Path
    files: list[Any] = field(default_factory=list)

    def start(self, n: int = 1) -> list[subprocess.Popen[bytes]]:
        new = []
        for _ in range(n):
            log = open(self.logs / f"worker-{len(self.procs)}.log", "wb")
            self.files.append(log)
            proc = subprocess.Popen([sys.executable, "-m", "metis_rag", "worker"], env=self.env,
                                    cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            self.procs.append(proc)
            new.append(proc)
        return new

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self.files:
            f.close()
        delete_queue(self.env["METIS_TASKS__QUEUE"])

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logs.iterdir()))


def delete_queue(queue: str) -> None:
    """Test queues are durable like real ones: remove them, or the broker keeps them forever."""
    from kombu import Connection

    with Connection(TaskSettings().broker_url) as conn:
        conn.default_channel.queue_delete(queue)


def worker_env(data_dir: Path, database_url: str, queue: str, prepared_models: Path) -> dict[str, str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    link = data_dir / "models"
    if not link.exists():
        link.symlink_to(prepared_models, target_is_directory=True)
    return {
        **os.environ, "METIS_DATA_DIR": str(data_dir), "METIS_DATABASE_URL": database_url,
        "METIS_TASKS__BACKEND": "celery", "METIS_TASKS__QUEUE": queue,
        "METIS_TASKS__CONCURRENCY": str(CONCURRENCY), "METIS_TASKS__MIN_CONCURRENCY": str(CONCURRENCY),
        "METIS_TASKS__HANDLER_MODULES": '["metis_rag.devtools.task_handlers"]',
        "METIS_TASKS__RETRY_BASE_S": "0.05", "METIS_TASKS__RETRY_MAX_S": "0.5",
        "METIS_TASKS__HEARTBEAT_S": "0.5", "METIS_CACHE__ENABLED": "false",
        "METIS_LOG_LEVEL": "info",
    }


async def wait_for_workers(url: str, n: int, timeout_s: float = 120) -> None:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                count = await conn.fetchval(
                    "SELECT count(*) FROM task_workers WHERE heartbeat_at > now() - interval '5 s'")
            except asyncpg.UndefinedTableError:
                count = 0
            if count >= n:
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{n} workers did not start in {timeout_s} s")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def celery_workers(
    celery_pg_url: str, prepared_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Workers]:
    pg_url = celery_pg_url
    root = tmp_path_factory.mktemp("celery")
    (root / "logs").mkdir()
    env = worker_env(root / "data", pg_url, f"metis-test-{uuid.uuid4().hex[:8]}", prepared_models)
    engine = create_engine(Settings(data_dir=root, database_url=pg_url))
    await migrate(engine)
    await engine.dispose()
    workers = Workers(env, [], root / "logs")
    workers.start(2)
    try:
        await wait_for_workers(pg_url, 2)
        yield workers
    finally:
        workers.stop()


async def clean(engine: Any) -> None:
    async with engine.begin() as conn:
        for table in ("task_edges", "task_blobs", "tasks", "task_workers"):
            await conn.execute(text(f"DELETE FROM {table}"))


async def _open_backend(settings: Settings, slots: int, fresh: bool) -> AsyncIterator[TaskBackend]:
    engine = create_engine(settings)
    await migrate(engine)
    if fresh:
        await clean(engine)  # the database is shared by the session
    backend = build_backend(settings, engine, build_registry(settings.tasks), "server")
    backend.slots = slots  # type: ignore[attr-defined]
    await backend.start(SimpleNamespace(engine=engine, settings=settings))
    try:
        yield backend
    finally:
        await backend.close()
        await engine.dispose()


@pytest.fixture
async def embedded_sqlite(tmp_path: Path) -> AsyncIterator[TaskBackend]:
    settings = Settings(data_dir=tmp_path, tasks=task_settings())
    async for b in _open_backend(settings, CONCURRENCY, fresh=False):
        yield b


@pytest.fixture
async def embedded_postgres(tmp_path: Path, pg_url: str) -> AsyncIterator[TaskBackend]:
    settings = Settings(data_dir=tmp_path, database_url=pg_url, tasks=task_settings())
    async for b in _open_backend(settings, CONCURRENCY, fresh=True):
        yield b


@pytest.fixture
async def celery(tmp_path: Path, celery_workers: Workers) -> AsyncIterator[TaskBackend]:
    settings = Settings(data_dir=tmp_path, database_url=celery_workers.env["METIS_DATABASE_URL"],
                        tasks=task_settings(backend="celery",
                                            queue=celery_workers.env["METIS_TASKS__QUEUE"]))
    async for b in _open_backend(settings, CONCURRENCY * 2, fresh=False):
        yield b


@pytest.fixture(params=["embedded_sqlite", "embedded_postgres", "celery"])
def backend(request: pytest.FixtureRequest) -> TaskBackend:
    """Every backend, behind the same interface; `backend.slots` is how many tasks run at once."""
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]
