"""Document analysis: the offline methods, the LLM path (fake server), and hostile answers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from metis_rag.agent.analysis import (
    DocumentAnalyzer,
    analyse_offline,
    classify_type,
    detect_language,
    parse_llm_answer,
)
from metis_rag.config import AnalysisSettings, LLMSettings
from metis_rag.devtools.fake_llm import FakeLLMServer
from metis_rag.llm import build_llm

INVOICE = """Invoice 2024-117. Bill to: Acme Corp, 12 Harbour Road. Payment terms: 30 days.
Subtotal: 1,200.00 EUR. VAT 20%: 240.00 EUR. Amount due: 1,440.00 EUR.
The invoice covers the annual maintenance of the turbine controllers."""

REPORT = """Annual report 2023. Revenue grew 12 percent in the fourth quarter, driven by turbine
controllers sold to offshore wind farms. Turbine controllers now make up half of revenue.
Operating margin improved as the offshore wind farms business scaled. The findings of the audit
show the offshore wind farms segment is the main source of growth. Results for the fiscal year
beat the plan. Headcount stayed flat. Turbine controllers for offshore wind farms remain the
priority for next year."""

FRENCH = """Le rapport annuel de la société montre que les ventes sont en hausse. Les clients
sont satisfaits de la qualité des produits et du service. Pour l'année prochaine, la direction
prévoit une croissance dans le secteur de l'énergie."""

GERMAN = """Der Vertrag wird zwischen den Parteien geschlossen. Die Laufzeit beträgt zwei Jahre
und kann mit einer Frist von drei Monaten gekündigt werden. Es gilt das Recht der Schweiz."""


def test_languages_are_told_apart() -> None:
    assert detect_language(REPORT) == "en"
    assert detect_language(FRENCH) == "fr"
    assert detect_language(GERMAN) == "de"
    assert detect_language("12 34 56") == "und"
    assert detect_language("zzkq vvrt plomf xxq wwert yyt") == "und"


def test_types_from_cues_and_names() -> None:
    assert classify_type("doc.pdf", "application/pdf", INVOICE) == "invoice"
    assert classify_type("q4.pdf", "application/pdf", REPORT) == "report"
    assert classify_type("main.py", "text/plain", "import os") == "code"
    assert classify_type("x.csv", "text/csv", "a,b") == "data"
    assert classify_type("notes.txt", "text/plain", "Nothing in particular here.") == "article"


def test_keywords_prefer_rare_recurring_terms_and_phrases() -> None:
    result = analyse_offline("report.txt", "text/plain", REPORT, AnalysisSettings(max_keywords=5))
    assert result.method == "offline" and result.language == "en"
    assert "turbine controllers" in result.topics
    assert "offshore wind" in " ".join(result.topics)
    # Common words never make it, however often they occur.
    assert not {"the", "year", "now", "show"} & set(result.topics)
    assert len(result.topics) <= 5


def test_the_extractive_summary_is_made_of_the_documents_sentences() -> None:
    result = analyse_offline("r.txt", "text/plain", REPORT, AnalysisSettings(summary_sentences=2))
    sentences = [s.strip() for s in result.summary.split(". ") if s.strip()]
    assert 1 <= len(sentences) <= 2
    assert result.summary[0].isupper() and result.summary.endswith(".")
    flat = " ".join(REPORT.split())
    for sentence in sentences:
        assert sentence.rstrip(".") in flat


@pytest.mark.parametrize("answer", [
    "", "not json", "[1, 2]", '{"type": "poem", "language": "en", "topics": [], "summary": ""}',
    '{"type": "report", "language": "english!!", "topics": [], "summary": "x"}',
    '{"type": "report", "language": "en", "topics": "a, b", "summary": "x"}',
    '{"type": "report", "language": "en", "topics": [], "summary": 3}',
    '{"type": "report", "language": "en", "topics": [}',
])
def test_unusable_llm_answers_are_refused(answer: str) -> None:
    assert parse_llm_answer(answer, 5) is None


def test_a_fenced_llm_answer_is_read_and_bounded() -> None:
    answer = ('Here you go:\n```json\n{"type": "Report", "language": "en", "topics": '
              '["Wind", "wind", "Turbines", 42, {"x": 1}], "summary": "  Revenue grew.  "}\n```')
    parsed = parse_llm_answer(answer, 2)
    assert parsed is not None
    assert (parsed.doc_type, parsed.language, parsed.topics, parsed.summary) == (
        "report", "en", ["wind", "turbines"], "Revenue grew.")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.mark.parametrize("provider", ["ollama", "openai"])
async def test_the_llm_analyses_when_configured_and_offline_answers_when_it_fails(
        fake: FakeLLMServer, provider: str) -> None:
    llm = build_llm(LLMSettings(provider=provider, url=fake.url, model="m", timeout_s=2))
    assert llm is not None
    await llm.start()
    try:
        fake.reset(config=True)
        fake.configure(answer='{"type": "report", "language": "en", "topics": ["wind power"],'
                              ' "summary": "Revenue grew."}')
        by_llm = await DocumentAnalyzer(AnalysisSettings(), llm).analyse("r.txt", "text/plain",
                                                                         REPORT)
        assert by_llm.method == "llm" and by_llm.topics == ["wind power"]
        fake.configure(answer="I cannot do that.")
        fallback = await DocumentAnalyzer(AnalysisSettings(), llm).analyse("r.txt", "text/plain",
                                                                           REPORT)
        assert fallback.method == "offline" and "turbine controllers" in fallback.topics
        fake.configure(answer="", fail_rate=1.0)
        down = await DocumentAnalyzer(AnalysisSettings(), llm).analyse("r.txt", "text/plain",
                                                                       REPORT)
        assert down.method == "offline"
        off = await DocumentAnalyzer(AnalysisSettings(use_llm=False), llm).analyse(
            "r.txt", "text/plain", REPORT)
        assert off.method == "offline"
    finally:
        fake.reset(config=True)
        await llm.close()
