"""Synthesis: one answer from every step's result, each sentence citing the passages it uses.

Citations are numbered once across the whole plan (the same chunk found by two steps keeps one
number). Offline, the answer is written from templates: a figure step gives "The port of ssh
is 22 [1].", a calculator step "22 + 80 = 102.", a comparison "pop3s has the highest port
(995) [2].", a plain search its most relevant sentence. With an LLM, the model writes the
answer from the same numbered sources and the steps' findings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..llm.base import ChatMessage
from .evaluate import NOT_FOUND, content_words, split_answer
from .figures import shown
from .graph import StepRecord
from .plan import Plan
from .tools import ToolCitation

_SOURCE_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(slots=True)
class Draft:
    text: str
    citations: list[ToolCitation] = field(default_factory=list)  # [1] is citations[0]
    missing: list[str] = field(default_factory=list)  # steps whose results are missing

    def sources(self) -> dict[int, str]:
        return {i: c.text for i, c in enumerate(self.citations, start=1)}


class _Numbering:
    def __init__(self) -> None:
        self.citations: list[ToolCitation] = []
        self._index: dict[tuple[str, str], int] = {}

    def number(self, citation: ToolCitation) -> int:
        key = (citation.document_id, citation.chunk_id)
        n = self._index.get(key)
        if n is None:
            self.citations.append(citation)
            n = self._index[key] = len(self.citations)
        return n

    def marks(self, citations: Sequence[ToolCitation]) -> str:
        return "".join(f"[{self.number(c)}]" for c in citations)


def best_sentence(query: str, citations: Sequence[ToolCitation]) -> tuple[str, ToolCitation] | None:
    """The source sentence sharing most content words with the query."""
    wanted = set(content_words(query))
    best: tuple[float, str, ToolCitation] | None = None
    for rank, citation in enumerate(citations[:5]):
        for sentence in _SOURCE_SENTENCE.split(citation.text):
            words = set(content_words(sentence))
            if not words:
                continue
            score = len(wanted & words) - rank * 0.01
            if best is None or score > best[0]:
                best = (score, sentence.strip(), citation)
    return (best[1], best[2]) if best else None


def synthesize(plan: Plan, records: Mapping[str, StepRecord],
               drop: Sequence[str] = ()) -> Draft:
    """The offline answer; `drop` lists sentences the evaluator found unsupported."""
    numbering = _Numbering()
    lines: list[str] = []
    missing: list[str] = []
    used_by_figure = {str(s.arguments.get("source")) for s in plan.steps if s.op == "figure"}
    for step in plan.steps:
        record = records[step.id]
        if not record.ok:
            missing.append(step.id)
            if step.op != "tool" or step.id not in used_by_figure:
                lines.append(f"{NOT_FOUND} {step.purpose or step.name} "
                             f"({record.error or record.status}).")
            continue
        if step.op == "figure":
            metric = step.arguments.get("metric") or "figure"
            lines.append(f"The {metric} of {step.arguments['entity']} is "
                         f"{shown(float(record.value))} {numbering.marks(record.citations)}.")
        elif step.op == "compare":
            args = record.arguments
            metric = step.arguments.get("metric") or "figure"
            lines.append(f"{args['winner']} has the {step.arguments.get('want', 'highest')} "
                         f"{metric} ({shown(float(args['figure']))}) "
                         f"{numbering.marks(record.citations)}.")
        elif step.name == "calculator":
            expression = str(record.arguments.get("expression", ""))
            value = record.value
            lines.append(f"{expression} = {shown(float(value)) if _is_number(value) else value}.")
        elif step.id in used_by_figure:
            continue  # its figure step says it
        elif record.citations:
            found = best_sentence(str(step.arguments.get("query", step.purpose)),
                                  record.citations)
            if found:
                lines.append(f"{found[0].rstrip('.')} {numbering.marks([found[1]])}.")
        elif record.result is not None and record.result.content:
            lines.append(record.result.content.strip()[:500])
    # Never refine an answer into nothing: an unsupported answer is still shown, with scores.
    kept = [line for line in lines if line not in drop] or lines
    return Draft(" ".join(kept), numbering.citations, missing)


def _is_number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def llm_messages(plan: Plan, records: Mapping[str, StepRecord], draft: Draft,
                 feedback: Sequence[str] = ()) -> list[ChatMessage]:
    """The prompt of an LLM synthesis over the offline draft's numbered sources."""
    sources = "\n".join(f"[{n}] {text[:1500]}" for n, text in draft.sources().items())
    findings = "\n".join(
        f"- {s.purpose or s.name}: {records[s.id].value if records[s.id].ok else 'not found'}"
        for s in plan.steps if s.op != "tool" or s.name != "rag_search")
    system = ("Answer the question from the numbered sources only. Cite every sentence with "
              "the numbers of its sources, like [1]. Use the findings of the steps; say "
              "plainly what could not be found.")
    user = f"Question: {plan.question}\n\nSources:\n{sources}\n\nFindings:\n{findings or '-'}"
    if feedback:
        user += ("\n\nA reviewer found these sentences of an earlier answer unsupported; do not "
                 "repeat them:\n" + "\n".join(f"- {s}" for s in feedback))
    return [ChatMessage("system", system), ChatMessage("user", user)]


def sentences_of(text: str) -> list[str]:
    return split_answer(text)
