"""kill -9 of a server and a worker in the middle of uploads and deletions, behind HAProxy:
no accepted upload is lost, no request the balancer can retry fails, and no answer cites a
deleted document, on the surviving server, through the balancer, or on the restarted one."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from metis_rag.devtools.cluster import Cluster
from tests.replicas.conftest import ask, cited, doc_text, ingest, unique_term, wait_task

pytestmark = pytest.mark.slow

UPLOADS = 16


def upload_until_accepted(base: str, term: str, failures: list[str]) -> dict[str, Any]:
    """A client that retries what failed (as a real one would), noting every failure."""
    for _attempt in range(10):
        try:
            files = {"files": (f"{term}.txt", doc_text(term), "text/plain")}
            r = httpx.post(base + "/api/documents", files=files, timeout=60)
            if r.status_code in (200, 202):
                return dict(r.json())
            failures.append(f"{term}: {r.status_code} {r.text[:200]}")
        except httpx.HTTPError as exc:
            failures.append(f"{term}: {exc!r}")
        time.sleep(0.5)
    raise AssertionError(f"upload of {term} never accepted: {failures}")


def test_kill_9_of_a_server_and_a_worker_mid_upload_loses_nothing_and_cites_nothing_stale(
    cluster: Cluster,
) -> None:
    lb = cluster.url
    old = {unique_term(): "" for _ in range(4)}
    for term in old:
        old[term] = ingest(lb, term)
        for i in (0, 1):  # cached on both servers
            assert old[term] in cited(ask(cluster.server_url(i), term))
    new = [unique_term() for _ in range(UPLOADS)]
    failures: list[str] = []
    with ThreadPoolExecutor(4) as pool:
        accepted = [pool.submit(upload_until_accepted, lb, term, failures) for term in new]
        deleted = [pool.submit(httpx.delete, f"{lb}/api/documents/{doc}", timeout=60)
                   for doc in old.values()]
        while sum(f.done() for f in accepted) < 3:
            time.sleep(0.01)
        cluster.server_procs[0].kill()  # mid-upload: some are in flight on it
        cluster.worker_procs[0].kill()  # mid-ingestion: it holds running tasks
        responses = [f.result() for f in accepted]
        assert [f.result().status_code for f in deleted] == [204] * len(old)
    assert failures == [], "the balancer let requests fail that it could retry"
    documents: dict[str, str] = {}
    for term, response in zip(new, responses, strict=True):
        result = response["results"][0]
        if result["status"] == "duplicate":
            documents[term] = result["document_id"]
            continue
        task = wait_task(lb, response["task_ids"][0], timeout_s=240)
        assert task["status"] == "completed", task
        documents[term] = task["result"]["document_id"]
    assert len(documents) == UPLOADS  # zero lost uploads
    cluster.restart_server(0)
    for base in (cluster.server_url(1), lb, cluster.server_url(0)):
        for term, doc in documents.items():
            assert doc in cited(ask(base, term)), (base, term)
        for term, doc in old.items():  # zero stale citations
            assert doc not in cited(ask(base, term)), (base, term)
