"""A real cluster for the replica tests: two `metis serve` processes and two Celery workers
on one PostgreSQL database with pgvector, one Redis and RabbitMQ, behind HAProxy."""

from __future__ import annotations

import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from metis_rag.devtools.cluster import Cluster
from metis_rag.devtools.pgvector_server import PgServer

SERVICES = {"Redis": ("127.0.0.1", 6379), "RabbitMQ": ("127.0.0.1", 5672)}


def missing_service() -> str | None:
    if shutil.which("haproxy") is None:
        return "haproxy is not installed (apt-get install haproxy)"
    for name, address in SERVICES.items():
        try:
            socket.create_connection(address, timeout=2).close()
        except OSError:
            return f"{name} is not running at {address[0]}:{address[1]}"
    return None


@pytest.fixture(scope="module")
async def cluster_db(pg_server: PgServer) -> AsyncIterator[str]:
    name = await pg_server.create_database("metis_replicas")
    try:
        yield pg_server.url(name)
    finally:
        await pg_server.drop_database(name)


@pytest.fixture(scope="module")
def cluster(cluster_db: str, prepared_models: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = missing_service()
    if reason:
        pytest.skip(reason)
    env = {  # quick recovery from a killed worker, so the kill test ends in seconds
        "METIS_TASKS__LEASE_S": "3", "METIS_TASKS__HEARTBEAT_S": "0.5",
        "METIS_TASKS__REDISPATCH_AFTER_S": "10", "METIS_TASKS__RETRY_BASE_S": "0.1",
        "METIS_TASKS__CONCURRENCY": "2", "METIS_TASKS__MIN_CONCURRENCY": "2",
        "METIS_CACHE__REDIS_TIMEOUT_MS": "1000",
        # A conversation continued on the other server must find its first turn: only durable
        # mode commits the rows before the answer returns (README, Conversations).
        "METIS_CONVERSATIONS__DURABLE": "true",
    }
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), cluster_db, prepared_models,
                      servers=2, workers=2, env=env)
    try:
        cluster.start()
    except Exception:
        cluster.close()
        raise
    yield cluster
    cluster.close()


def unique_term() -> str:
    return "zq" + uuid.uuid4().hex[:10]


def doc_text(term: str) -> bytes:
    return (f"Field notes on {term}. The {term} valve opens at dawn and closes at dusk; "
            f"operators log every {term} reading in the blue binder.").encode()


def upload(base: str, term: str, timeout_s: float = 60) -> dict[str, Any]:
    files = {"files": (f"{term}.txt", doc_text(term), "text/plain")}
    r = httpx.post(base + "/api/documents", files=files, timeout=timeout_s)
    r.raise_for_status()
    return dict(r.json())


def wait_task(base: str, task_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            r = httpx.get(f"{base}/api/tasks/{task_id}", timeout=10)
            if r.status_code == 200 and r.json()["status"] in ("completed", "failed", "cancelled"):
                return dict(r.json())
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} not finished after {timeout_s} s")
        time.sleep(0.05)


def ingest(base: str, term: str) -> str:
    """Upload one document and wait for its task (searchable; its analysis may still be
    running, which leaves cached plain answers alone); its public id."""
    task = wait_task(base, upload(base, term)["task_ids"][0])
    assert task["status"] == "completed", task
    return str(task["result"]["document_id"])


def ask(base: str, term: str) -> dict[str, Any]:
    r = httpx.post(base + "/api/chat/query",
                   json={"message": f"When does the {term} valve open?"}, timeout=60)
    r.raise_for_status()
    return dict(r.json())


def cited(answer: dict[str, Any]) -> set[str]:
    return {c["document_id"] for c in answer["citations"]}
