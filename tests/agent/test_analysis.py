"""Document analysis: the offline methods, the LLM path (fake server), and hostile answers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

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


CONFIG = """# /etc/adduser.conf: `adduser' configuration.
# The DSHELL variable specifies the default login shell on your system.
DSHELL=/bin/bash
# The DHOME variable specifies the directory containing users' home directories.
DHOME=/home
GROUPHOMES=no
LETTERHOMES=no
SKEL=/etc/skel
FIRST_SYSTEM_UID=100
LAST_SYSTEM_UID=999
"""

SCRIPT = """#!/bin/sh
set -e
if [ -z "$1" ]; then
    echo "usage: $0 FILE" >&2
    exit 1
fi
for f in "$@"; do
    gzip -9 "$f"
done
"""

TABLE = """# Internet (IP) protocols
# Updated from http://www.iana.org/assignments/protocol-numbers and other
# sources. New protocols will be added on request if they have been officially
# assigned by IANA and are not historical.
ip	0	IP		# internet protocol, pseudo protocol number
icmp	1	ICMP		# internet control message protocol
igmp	2	IGMP		# Internet Group Management
ggp	3	GGP		# gateway-gateway protocol
ipencap	4	IP-ENCAP	# IP encapsulated in IP (officially ``IP'')
st	5	ST		# ST datagram mode
tcp	6	TCP		# transmission control protocol
egp	8	EGP		# exterior gateway protocol
"""

MAN = """LS(1)                      User Commands                      LS(1)

NAME
       ls - list directory contents

SYNOPSIS
       ls [OPTION]... [FILE]...

DESCRIPTION
       List information about the FILEs (the current directory by default).
       Sort entries alphabetically if none of -cftuvSUX nor --sort is specified.

OPTIONS
       -a, --all
              do not ignore entries starting with .
"""

LICENCE = """Permission is hereby granted, free of charge, to any person obtaining a copy of this
software, to deal in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the
Software, subject to the following conditions: the above copyright notice and this permission
notice shall be included in all copies. THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF
ANY KIND. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR
OTHER LIABILITY ARISING FROM THE SOFTWARE. Redistribution of the license text is allowed."""


@pytest.mark.parametrize("name,text,kind", [
    ("adduser.conf", CONFIG, "config"), ("settings", CONFIG, "config"),
    ("gzip-all", SCRIPT, "code"), ("protocols", TABLE, "data"), ("ls.txt", MAN, "manual"),
    ("MIT", LICENCE, "contract")])
def test_types_from_the_layout_of_the_lines(name: str, text: str, kind: str) -> None:
    assert classify_type(name, "text/plain", text) == kind


@pytest.mark.skipif(not Path("/etc/protocols").exists(), reason="needs Debian's netbase")
def test_etc_protocols_is_a_table_not_an_invoice() -> None:
    # Counted as substrings, "vat" (in "private") and "to:" made it an invoice.
    assert classify_type("protocols.txt", "text/plain",
                         Path("/etc/protocols").read_text()) == "data"


def test_topics_leave_out_markup_addresses_broken_words_and_columns() -> None:
    rst = ("The :func:`heapify` function turns a list into a heap. "
           ".. versionchanged:: 3.9\n   The heapify function is faster. See "
           "https://www.python.org/dev/peps for details. The heapify function is linear.\n"
           "A heap is a binary tree. Every heap keeps its smallest item first. The heap "
           "invariant holds after heapify. The priority queue sits on a heap. The docu\u2010\n"
           "mentation of heapify is short. The docu\u2010\nmentation explains it.\n")
    topics = analyse_offline("heapq.rst", "text/plain", rst, AnalysisSettings()).topics
    words = {w for t in topics for w in t.split()}
    assert "heapify" in words and "documentation" in words
    assert not words & {"func", "versionchanged", "https", "www", "python", "org", "docu",
                        "mentation"}
    columns = analyse_offline("protocols", "text/plain", TABLE, AnalysisSettings()).topics
    # "igmp" and "ggp" stand on neighbouring rows, never side by side on one line.
    assert all(len(t.split()) == 1 or t in TABLE.lower() for t in columns), columns


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
              '["Wind", "wind", "Tur\\u0000bines", 42, {"x": 1}], "summary": "  Revenue grew.  "}'
              '\n```')
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
        # What the analysis cost, as the provider counted it (bench_analysis.py reports it).
        assert by_llm.details["prompt_tokens"] > 50 and by_llm.details["completion_tokens"] > 5
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


async def test_the_offline_analysis_leaves_the_event_loop_free_for_other_requests() -> None:
    """A long document's offline analysis (and the word-frequency list it loads) runs in a
    thread: a request that arrives meanwhile is served before it ends, not after."""
    text = REPORT * 400
    analysis = asyncio.create_task(
        DocumentAnalyzer(AnalysisSettings()).analyse("long.txt", "text/plain", text))
    await asyncio.sleep(0)  # the analysis starts
    served_during_analysis = not analysis.done()
    result = await analysis
    assert served_during_analysis
    assert result.method == "offline" and result.topics
