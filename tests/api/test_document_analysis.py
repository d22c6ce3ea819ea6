"""Analysis at ingestion over HTTP: stored, shown, filterable; off with the switch."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from asgi_lifespan import LifespanManager

from metis_rag.app import create_app
from metis_rag.config import Settings
from tests.lifespan import lifespan
from tests.uploads import ingest, wait_tasks

INVOICE = (b"Invoice 2024-117. Bill to: Acme Corp. Payment terms: 30 days. Subtotal: 1,200.00 EUR."
           b" VAT 20%: 240.00 EUR. Amount due: 1,440.00 EUR for turbine maintenance.")
REPORT = (b"Annual report 2023. Revenue grew 12 percent in the fourth quarter, driven by turbine "
          b"controllers sold to offshore wind farms. Turbine controllers now make up half of "
          b"revenue. The findings show offshore wind farms drive growth. Results beat the plan.")
FRENCH = ("Le rapport de la soci\u00e9t\u00e9 montre que les ventes sont en hausse. Les clients "
          "sont satisfaits de la qualit\u00e9 des produits et du service pour les "
          "\u00e9oliennes.").encode()


async def open_client(settings: Settings) -> tuple[LifespanManager, httpx.AsyncClient]:
    manager = lifespan(create_app(settings))
    await manager.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app),
                               base_url="http://metis")
    return manager, client


@pytest.mark.databases
async def test_documents_are_analysed_shown_and_filterable(
        make_settings: Callable[..., Settings]) -> None:
    manager, client = await open_client(make_settings())
    try:
        body = await ingest(client, {"invoice.txt": INVOICE, "q4.txt": REPORT,
                                     "rapport.txt": FRENCH})
        ids = {r["filename"]: r["document_id"] for r in body["results"]}
        doc = (await client.get(f"/api/documents/{ids['q4.txt']}")).json()
        assert doc["doc_type"] == "report" and doc["language"] == "en"
        assert "turbine controllers" in doc["topics"]
        assert doc["summary"] and doc["analysis"]["method"] == "offline"
        assert doc["analysis_status"] == "done"

        async def listed(**params: str) -> set[str]:
            r = await client.get("/api/documents", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            assert page["total"] == len(page["items"])
            return {d["filename"] for d in page["items"]}

        everything = (await client.get("/api/documents")).json()["items"]
        assert all(d["doc_type"] and d["language"] for d in everything)
        assert await listed(doc_type="invoice") == {"invoice.txt"}
        assert await listed(language="fr") == {"rapport.txt"}
        assert await listed(language="en") == {"invoice.txt", "q4.txt"}
        assert await listed(topic="turbine controllers") == {"q4.txt"}
        assert await listed(topic="Turbine Controllers") == {"q4.txt"}
        assert await listed(doc_type="report", language="fr") == set()
        assert (await client.get("/api/documents", params={"doc_type": "x" * 41})
                ).status_code == 422
        for hostile in ["' OR 1=1 --", "%", "_", "report' --", "../"]:
            assert await listed(topic=hostile) == set()
            assert await listed(doc_type=hostile) == set()
        for params in ({"topic": "a\u0000b"}, {"language": "\u0000"}):
            assert (await client.get("/api/documents", params=params)).status_code == 422
        r = await client.post("/api/chat/query", json={"message": "x", "topic": "a\u0000"})
        assert r.status_code == 422

        async def cited(**filters: str) -> set[str]:
            r = await client.post("/api/chat/query", json={
                "message": "How much revenue did turbine controllers bring?", **filters})
            assert r.status_code == 200, r.text
            return {c["filename"] for c in r.json()["citations"]}

        assert "q4.txt" in await cited()
        # The same question narrowed to invoices: a cached unfiltered answer must not leak in.
        assert await cited(doc_type="invoice") == {"invoice.txt"}
        assert await cited(language="fr") == {"rapport.txt"}
        assert await cited(topic="turbine controllers") == {"q4.txt"}
        assert await cited(doc_type="contract") == set()
    finally:
        await client.aclose()
        await manager.__aexit__(None, None, None)


async def test_with_an_llm_the_analysis_is_the_models(
        make_settings: Callable[..., Settings]) -> None:
    from metis_rag.config import LLMSettings
    from metis_rag.devtools.fake_llm import FakeLLMServer

    answer = ('{"type": "report", "language": "en", "topics": ["Wind Turbines"], '
              '"summary": "Revenue grew on turbines."}')
    with FakeLLMServer(answer=answer) as fake:
        settings = make_settings(llm=LLMSettings(provider="openai", url=fake.url, model="m"))
        manager, client = await open_client(settings)
        try:
            body = await ingest(client, {"q4.txt": REPORT})
            doc_id = body["results"][0]["document_id"]
            # The ingest task ends at its commit; the LLM's analysis is a low-priority task.
            ingested = (await client.get(f"/api/tasks/{body['task_ids'][0]}")).json()
            analysis_id = ingested["result"]["analysis_task_id"]
            analysed = (await wait_tasks(client, [analysis_id]))[analysis_id]
            assert (analysed["type"], analysed["status"], analysed["result"]["method"]) == (
                "analyse_document", "completed", "llm")
            assert analysed["priority"] in ("low", 0), analysed
            doc = (await client.get(f"/api/documents/{doc_id}")).json()
            assert (doc["doc_type"], doc["topics"], doc["summary"]) == (
                "report", ["wind turbines"], "Revenue grew on turbines.")
            assert doc["analysis"]["method"] == "llm" and doc["analysis"]["model"]
            listed = (await client.get("/api/documents", params={"topic": "wind turbines"})
                      ).json()
            assert [d["id"] for d in listed["items"]] == [doc_id]
        finally:
            await client.aclose()
            await manager.__aexit__(None, None, None)


async def test_a_document_is_searchable_before_its_analysis_stores(
        make_settings: Callable[..., Settings]) -> None:
    """The ingest task ends at its commit: until the analysis task stores, the document says
    its analysis is pending, and a replaced document does not show its old content's."""
    from metis_rag.config import LLMSettings
    from metis_rag.devtools.fake_llm import FakeLLMServer

    answer = ('{"type": "report", "language": "en", "topics": ["Wind Turbines"], '
              '"summary": "Revenue grew on turbines."}')
    with FakeLLMServer(answer=answer) as fake:
        settings = make_settings(llm=LLMSettings(provider="openai", url=fake.url, model="m",
                                                 timeout_s=3.0))
        manager, client = await open_client(settings)
        try:
            doc_id = (await ingest(client, {"q4.txt": REPORT}))["results"][0]["document_id"]
            doc = (await client.get(f"/api/documents/{doc_id}")).json()
            assert (doc["analysis_status"], doc["doc_type"]) == ("done", "report")

            fake.configure(hang=True)  # the analysis now waits on the model (until timeout_s)
            r = await client.put(f"/api/documents/{doc_id}", files={"files": ("q4.txt", INVOICE)})
            assert r.status_code == 202, r.text
            ingested = (await wait_tasks(client, [r.json()["id"]]))[r.json()["id"]]
            assert ingested["status"] == "completed", ingested
            doc = (await client.get(f"/api/documents/{doc_id}")).json()
            assert (doc["status"], doc["analysis_status"], doc["analysis"]) == (
                "ready", "pending", {"status": "pending"})
            assert doc["chunk_count"] == ingested["result"]["chunks"] > 0
            assert (doc["doc_type"], doc["language"], doc["topics"], doc["summary"]) == (
                None, None, [], None)
            listed = (await client.get("/api/documents", params={"topic": "wind turbines"})
                      ).json()
            assert listed["items"] == []
            page = (await client.get("/api/documents")).json()["items"]
            assert [d["analysis_status"] for d in page] == ["pending"]

            fake.configure(hang=False)
            analysis_id = ingested["result"]["analysis_task_id"]
            analysed = (await wait_tasks(client, [analysis_id]))[analysis_id]
            assert analysed["status"] == "completed", analysed
            doc = (await client.get(f"/api/documents/{doc_id}")).json()
            # The hung request timed out: the offline methods answered, on the new content.
            assert (doc["analysis_status"], doc["analysis"]["method"], doc["doc_type"]) == (
                "done", "offline", "invoice")
        finally:
            await client.aclose()
            await manager.__aexit__(None, None, None)


async def test_the_switch_turns_analysis_off(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(analysis={"enabled": False})
    manager, client = await open_client(settings)
    try:
        body = await ingest(client, {"q4.txt": REPORT})
        doc = (await client.get(f"/api/documents/{body['results'][0]['document_id']}")).json()
        assert doc["doc_type"] is None and doc["topics"] == [] and doc["analysis"] is None
        assert doc["analysis_status"] is None
    finally:
        await client.aclose()
        await manager.__aexit__(None, None, None)
