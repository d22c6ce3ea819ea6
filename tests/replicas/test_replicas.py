"""Two servers behind HAProxy on one database, one Redis and RabbitMQ: what one server does,
the other serves at once; nothing deleted is cited again; cache clears reach every server."""

from __future__ import annotations

import time

import httpx
import pytest

from metis_rag.devtools.cluster import Cluster
from tests.replicas.conftest import ask, cited, ingest, unique_term, upload, wait_task

pytestmark = pytest.mark.slow


def test_a_document_uploaded_through_one_server_is_cited_by_the_other_within_1_s(
    cluster: Cluster,
) -> None:
    a, b = cluster.server_url(0), cluster.server_url(1)
    term = unique_term()
    assert cited(ask(b, term)) == set()  # B has answered (and cached) before the upload
    task = wait_task(a, upload(a, term)["task_ids"][0])
    assert task["status"] == "completed", task
    done, doc = time.monotonic(), task["result"]["document_id"]
    while doc not in cited(ask(b, term)):
        assert time.monotonic() - done < 1.0, "B did not cite the new document within 1 s"
    assert doc in cited(ask(cluster.url, term))  # and through the balancer


def test_a_document_deleted_on_one_server_is_never_cited_by_the_other(
    cluster: Cluster,
) -> None:
    a, b = cluster.server_url(0), cluster.server_url(1)
    term = unique_term()
    doc = ingest(a, term)
    for base in (a, b, b):  # cached in both servers' memory tiers and in Redis
        assert doc in cited(ask(base, term))
    assert ask(b, term)["cache"]["level"] == "exact"
    assert httpx.delete(f"{a}/api/documents/{doc}", timeout=30).status_code == 204
    for base in (b, a, cluster.url) * 5:
        assert doc not in cited(ask(base, term))


def test_a_cache_entry_made_on_one_server_serves_the_other_and_a_clear_reaches_both(
    cluster: Cluster,
) -> None:
    a, b = cluster.server_url(0), cluster.server_url(1)
    term = unique_term()
    ingest(a, term)
    assert ask(a, term)["cache"]["level"] is None
    assert ask(b, term)["cache"]["level"] == "exact"  # from Redis, A's entry
    assert ask(b, term)["cache"]["level"] == "exact"  # now from B's own memory tier
    assert httpx.delete(f"{a}/api/cache", timeout=30).status_code == 200
    cleared = time.monotonic()
    # The clear reaches B's memory tier over pub/sub: at most a moment late, never missed.
    while ask(b, term)["cache"]["level"] == "exact":
        assert time.monotonic() - cleared < 1.0, "B still serves a cleared answer after 1 s"
    assert ask(a, term)["cache"]["level"] == "exact"  # B's new answer, shared again
