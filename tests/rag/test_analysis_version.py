"""A document's analysis, stored after its upload, moves the collection's analysis version only:
plain answers cached meanwhile stay exact hits, answers filtered by the analysis do not go stale,
and a content change still makes every answer a miss."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from metis_rag.agent.analysis_step import analyse_document
from metis_rag.config import Settings
from metis_rag.ingest.pipeline import Upload
from metis_rag.schemas import ChatAnswer, ChatQuery
from metis_rag.services import Services, open_services

REPORT = (b"Annual report 2023. Revenue grew 12 percent in the fourth quarter, driven by turbine "
          b"controllers sold to offshore wind farms. Turbine controllers now make up half of "
          b"revenue. The findings show offshore wind farms drive growth. Results beat the plan.")
INVOICE = (b"Invoice 2024-117. Bill to: Acme Corp. Payment terms: 30 days. Subtotal: 1,200.00 EUR."
           b" VAT 20%: 240.00 EUR. Amount due: 1,440.00 EUR for turbine maintenance.")
QUESTION = "How much revenue did turbine controllers bring?"


async def upload(services: Services, name: str, data: bytes) -> str:
    """Searchable at once; its analysis is left for `analyse` (the low-priority task's work)."""
    report = await services.ingestor.ingest([Upload(name, data)], "default")
    doc_id = report.results[0].document_id
    assert doc_id is not None
    return doc_id


async def analyse(services: Services, doc_id: str) -> None:
    assert services.analyzer is not None
    assert await analyse_document(services.sessions, services.analyzer, doc_id) is not None


async def ask(services: Services, **filters: str) -> ChatAnswer:
    answer = await services.chat.answer(ChatQuery(message=QUESTION, **filters))
    assert not answer.warnings, answer.warnings
    return answer


def cited(answer: ChatAnswer) -> set[str]:
    return {c.filename for c in answer.citations}


@pytest.mark.databases
async def test_an_analysis_keeps_plain_answers_and_refreshes_filtered_ones(
        make_settings: Callable[..., Settings]) -> None:
    async with open_services(make_settings()) as services:
        doc = await upload(services, "q4.txt", REPORT)
        first = await ask(services)
        assert first.cache.level is None and cited(first) == {"q4.txt"}
        # Not analysed yet: no document is a report, so the narrowed question finds nothing.
        narrowed = await ask(services, doc_type="report")
        assert cited(narrowed) == set()
        assert (await ask(services, doc_type="report")).cache.level == "exact"

        await analyse(services, doc)
        again = await ask(services)
        assert again.cache.level == "exact" and again.answer == first.answer
        # What reads the analysis sees the new one: no stale "nothing found".
        narrowed = await ask(services, doc_type="report")
        assert narrowed.cache.level is None and cited(narrowed) == {"q4.txt"}
        assert (await ask(services, doc_type="report")).cache.level == "exact"

        # A content change still makes every answer, plain or filtered, a miss.
        await upload(services, "invoice.txt", INVOICE)
        assert (await ask(services)).cache.level is None
        assert (await ask(services, doc_type="report")).cache.level is None
        assert (await ask(services)).cache.level == "exact"


@pytest.mark.parametrize("backend", ["disk", "redis"])
async def test_a_shared_tier_serves_an_answer_cached_before_the_analysis_after_a_restart(
        make_settings: Callable[..., Settings], backend: str,
        request: pytest.FixtureRequest) -> None:
    """The memory tier goes with the process: the second start is served by the shared tier
    (another server of a scale-out deployment would be too)."""
    cache: dict[str, str] = {"backend": backend}
    if backend == "redis":
        cache["redis_url"] = request.getfixturevalue("redis_server").url
    settings = make_settings(cache=cache)
    async with open_services(settings) as services:
        doc = await upload(services, "q4.txt", REPORT)
        first = await ask(services)
        assert first.cache.level is None
        assert cited(await ask(services, language="en")) == set()  # not analysed yet
        await analyse(services, doc)
    async with open_services(settings) as services:
        again = await ask(services)
        assert again.cache.level == "exact" and again.answer == first.answer
        narrowed = await ask(services, language="en")
        assert narrowed.cache.level is None and cited(narrowed) == {"q4.txt"}

