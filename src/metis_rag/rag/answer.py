"""Turning retrieved chunks into an answer: the LLM prompt, and the extractive answerer."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..llm.base import ChatMessage
from ..store.fulltext import fulltext_terms
from .retriever import Retrieved

PROMPT_VERSION = "1"
SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources below. Cite the sources you use "
    "inline as [1], [2], and so on. If the sources do not contain the answer, say that you "
    "do not know. Be concise."
)
NO_RAG_PROMPT = "You are a helpful, concise assistant."

_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|\n{2,}")
_CITE_RE = re.compile(r"\[(\d{1,2})\]")


def source_label(r: Retrieved) -> str:
    where = []
    if r.chunk.page is not None:
        where.append(f"page {r.chunk.page}")
    if r.chunk.section:
        where.append(f"section {r.chunk.section!r}")
    return r.chunk.filename + (f" ({', '.join(where)})" if where else "")


def build_messages(
    question: str, sources: Sequence[Retrieved], history: Sequence[ChatMessage], use_rag: bool
) -> list[ChatMessage]:
    if not use_rag:
        return [ChatMessage("system", NO_RAG_PROMPT), *history, ChatMessage("user", question)]
    blocks = "\n\n".join(
        f"[{i}] {source_label(r)}\n{r.chunk.text}" for i, r in enumerate(sources, start=1)
    )
    user = f"Sources:\n\n{blocks}\n\nQuestion: {question}"
    return [ChatMessage("system", SYSTEM_PROMPT), *history, ChatMessage("user", user)]


def cited_numbers(answer: str, n_sources: int) -> list[int]:
    return sorted({int(m) for m in _CITE_RE.findall(answer) if 1 <= int(m) <= n_sources})


@dataclass(frozen=True, slots=True)
class _Candidate:
    score: float
    source: int
    order: int
    text: str


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_RE.split(text) if s and len(s.strip()) > 1]


def extractive_answer(question: str, sources: Sequence[Retrieved], max_sentences: int = 3) -> str:
    """The sentences of the retrieved chunks that best cover the question, each cited as [n].

    A sentence scores by the IDF-weighted question words it contains (IDF over the retrieved
    sentences), plus its chunk's retrieval rank as a prior; no model call, so it costs well
    under a millisecond.
    """
    if not sources:
        return "I could not find anything about this in the documents."
    terms = set(fulltext_terms(question))
    candidates: list[tuple[int, int, str, set[str]]] = []
    for i, r in enumerate(sources, start=1):
        for j, sent in enumerate(split_sentences(r.chunk.text)):
            candidates.append((i, j, sent, set(fulltext_terms(sent))))
    df = Counter(w for *_, words in candidates for w in words & terms)
    n = len(candidates) or 1
    scored: list[_Candidate] = []
    for i, j, sent, words in candidates:
        overlap = sum(math.log(1 + n / df[w]) for w in words & terms)
        prior = sources[i - 1].score + 1.0 / (i + 1)
        scored.append(_Candidate(overlap + prior, i, j, sent))
    best = sorted(scored, key=lambda c: c.score, reverse=True)[:max_sentences]
    return " ".join(f"{c.text} [{c.source}]" for c in best)
