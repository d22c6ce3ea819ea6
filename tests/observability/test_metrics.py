"""GET /metrics on the real app: requests by route template, pipeline stages, cache levels,
embedding batches, the DB pool, the process, and one registry per app."""

from __future__ import annotations

import pytest

from .conftest import Served, serve
from .helpers import scrape, total, value

HTTP = "metis_http_request_duration_seconds_count"


async def test_requests_are_counted_by_route_template_and_status(served: Served) -> None:
    doc = (await served.ingest())["results"][0]["document_id"]
    assert (await served.client.get(f"/api/documents/{doc}")).status_code == 200
    assert (await served.client.get("/api/documents/987654")).status_code == 404
    assert (await served.client.get("/no/such/page")).status_code == 404

    m = await served.metrics()
    route = "/api/documents/{document_id}"
    assert value(m, HTTP, method="GET", route=route, status="200") == 1
    assert value(m, HTTP, method="GET", route=route, status="404") == 1
    assert value(m, HTTP, method="POST", route="/api/documents", status="202") == 1
    # unknown paths share one label: a scanner cannot blow up the series count
    assert value(m, HTTP, method="GET", route="unmatched", status="404") == 1
    assert not any("987654" in str(labels) for _, labels in m)
    assert value(m, "metis_http_requests_in_flight") == 1  # the scrape itself


async def test_stages_answers_and_cache_levels_match_the_live_counters(served: Served) -> None:
    await served.ingest()
    first = await served.ask("How long is the refund window?")
    again = await served.ask("How long is the refund window?")
    assert first["cache"]["level"] is None and again["cache"]["level"] == "exact"

    m = await served.metrics()
    stage = "metis_pipeline_stage_duration_seconds_count"
    assert value(m, stage, stage="embed") == 1  # the exact hit skips the model
    assert value(m, stage, stage="retrieve") == 1
    assert value(m, stage, stage="total") == 2
    assert value(m, "metis_answers_total", mode="extractive", cache_level="none") == 1
    assert value(m, "metis_answers_total", mode="extractive", cache_level="exact") == 1

    stats = (await served.client.get("/api/cache/stats")).json()["levels"]
    m = await served.metrics()
    for level, s in stats.items():
        assert total(m, "metis_cache_hits_total", level=level) == s["hits"], level
        assert value(m, "metis_cache_misses_total", level=level) == s["misses"], level
    assert total(m, "metis_cache_hits_total", level="exact") == 1


SEM_REJECTED = "metis_cache_semantic_rejected_total"


async def test_semantic_lookups_skipped_while_the_level_is_off(served: Served) -> None:
    # The default bound (0.01) admits no hit: every exact miss skips the semantic lookup.
    await served.ingest()
    await served.ask("How long is the refund window?")
    await served.ask("Is shipping free?")
    await served.ask("Is shipping free?")  # an exact hit never reaches the semantic level
    m = await served.metrics()
    stats = (await served.client.get("/api/cache/stats")).json()["levels"]["semantic"]
    assert stats["serving"] is False and stats["skipped"] == 2
    assert value(m, SEM_REJECTED, reason="skipped") == 2
    assert total(m, SEM_REJECTED) == 2  # nothing judged, nothing rejected


async def test_semantic_rejections_are_counted_by_reason(served_with) -> None:  # type: ignore[no-untyped-def]
    async with served_with(cache={"semantic_max_error": 0.2}) as s:
        await s.ingest()
        await s.ask("How long is the refund window?")
        # Same subject, another question type: rejected by the hard check, not by the score.
        answer = await s.ask("When does the refund window start?")
        assert answer["cache"]["level"] is None
        m = await s.metrics()
        stats = (await s.client.get("/api/cache/stats")).json()["levels"]["semantic"]
    assert stats["rejected"] == {"question_type": 1}
    assert value(m, SEM_REJECTED, reason="question_type") == 1
    assert value(m, SEM_REJECTED, reason="score") == 0  # every reason is exported from zero
    assert value(m, SEM_REJECTED, reason="answer_gone") == 0
    assert value(m, SEM_REJECTED, reason="skipped") == 0
    assert total(m, SEM_REJECTED) == 1


async def test_embedding_batches_and_throughput(served: Served) -> None:
    result = (await served.ingest())["results"][0]
    m = await served.metrics()
    model = served.services.embedder.model_id
    assert value(m, "metis_embed_texts_total", model=model) == result["chunks"]
    assert value(m, "metis_embed_batch_size_sum", model=model) == result["chunks"]
    assert value(m, "metis_embed_batch_size_count", model=model) >= 1  # type: ignore[operator]
    assert value(m, "metis_embed_duration_seconds_sum", model=model) > 0  # type: ignore[operator]

    served.services.metrics.observe_microbatch(7, 0.01)  # what BatchingEmbedder's on_batch calls
    m = await served.metrics()
    assert value(m, "metis_embed_microbatch_size_sum") == 7


async def test_db_pool_and_process_resources(served: Served) -> None:
    await served.client.get("/api/documents")
    m = await served.metrics()
    assert value(m, "metis_db_pool_size") == 8
    assert value(m, "metis_db_pool_checked_out") == 0
    assert value(m, "metis_db_pool_overflow") == 0
    async with served.services.engine.connect():
        m = await served.metrics()
        assert value(m, "metis_db_pool_checked_out") == 1
    assert value(m, "process_resident_memory_bytes") > 50e6  # type: ignore[operator]
    assert value(m, "process_cpu_seconds_total") > 0  # type: ignore[operator]
    assert total(m, "metis_db_query_duration_seconds_count") > 0


async def test_each_app_has_its_own_registry(make_settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with serve(make_settings(data_dir=tmp_path / "a")) as a, \
            serve(make_settings(data_dir=tmp_path / "b")) as b:
        for _ in range(3):
            await a.client.get("/api/documents")
        ma, mb = await a.metrics(), await b.metrics()
        route = {"method": "GET", "route": "/api/documents", "status": "200"}
        assert value(ma, HTTP, **route) == 3
        assert value(mb, HTTP, **route) is None
    assert a.services.metrics.registry is not b.services.metrics.registry


async def test_metrics_are_compressed_for_scrapers_that_ask(served: Served) -> None:
    r = await served.client.get("/metrics", headers={"accept-encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip"
    assert "metis_http_request_duration_seconds" in r.text  # httpx decoded it


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/dashboard.js",
                                  "/dashboard/dashboard.css"])
async def test_dashboard_files_are_served(served: Served, path: str) -> None:
    r = await served.client.get(path)
    assert r.status_code == 200 and len(r.content) > 500


async def test_only_shipped_dashboard_files_are_served(served: Served) -> None:
    for path in ["/dashboard/..%2F__init__.py", "/dashboard/nope.js", "/dashboard/%2e%2e"]:
        r = await served.client.get(path)
        assert r.status_code == 404, path
        assert r.json()["code"] == "not_found"


async def test_scrapes_do_not_touch_the_dashboards_request_figures(served: Served) -> None:
    for _ in range(3):
        await served.client.get("/metrics")
        await served.client.get("/api/metrics/summary")
    await served.client.get("/api/documents")
    summary = await served.summary()
    assert summary["requests"]["requests"] == 1
    m = scrape((await served.client.get("/metrics")).text)
    assert value(m, HTTP, method="GET", route="/metrics", status="200") == 3


async def test_made_up_methods_share_one_label(served: Served) -> None:
    for method in ["FOO", "BAR", "BAZ"]:
        r = await served.client.request(method, "/api/documents")
        assert r.status_code == 405
    m = await served.metrics()
    assert value(m, HTTP, method="OTHER", route="/api/documents", status="405") == 3
    assert not any(("method", "FOO") in labels for _, labels in m)


async def test_compression_can_be_switched_off(served_with) -> None:  # type: ignore[no-untyped-def]
    async with served_with(compression={"enabled": False}) as s:
        r = await s.client.get("/metrics", headers={"accept-encoding": "gzip, zstd"})
        assert "content-encoding" not in r.headers and len(r.content) > 2000
