"""Scoring an answer: groundedness, relevance, completeness (each 0-1).

Offline (the default), groundedness is judged sentence by sentence against the sources the
sentence cites: the sentence's content words must appear together in *one* line or sentence
of a cited source - not scattered over the passage - and every number it states must be on
that same line. That is what catches the near-miss "the port of ssh is 23" against a passage
where 23 belongs to telnet, two lines down. A sentence of arithmetic ("22 + 80 = 102") is
supported when its sum is right and its operands are supported figures of the answer.
With an LLM configured, `LLMJudge` asks the model instead (structured JSON).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..llm.base import LLM, ChatMessage

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9\-]*|\d+(?:\.\d+)?")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")
_CITE = re.compile(r"\[(\d{1,3})\]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])|(?<=\]\.)\s+|\n+")
_ARITH = re.compile(r"(-?\d+(?:\.\d+)?(?:\s*[-+*/x×]\s*-?\d+(?:\.\d+)?)+)\s*=\s*(-?\d+(?:\.\d+)?)")
_STOP = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was "
    "were which with what who how when where why does do did than then there these those "
    "their they them one both each also not no yes can could would should will may might "
    "into about over under more less".split()
    # Comparatives: what they claim is checked through the figures the answer states.
    + "higher highest lower lowest larger largest smaller smallest bigger biggest greater "
    "greatest has have".split())
NUMBER_MISSING_FACTOR = 0.25
NOT_FOUND = "I could not establish"


def content_words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text) if w.lower() not in _STOP]


def split_answer(answer: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(answer) if s.strip()]


def _units(text: str) -> list[str]:
    """Lines (tables) or sentences (prose) of a source, whichever is finer."""
    out: list[str] = []
    for line in text.splitlines():
        out += [s for s in _SENTENCE.split(line) if s.strip()]
    return out or [text]


def sentence_support(sentence: str, sources: Sequence[str], question: str = "") -> float:
    """How well the cited sources support `sentence` (0-1): locality (of the sentence's words
    found in the sources, the share found together in one line or sentence, numbers required
    there) squared, times coverage (the share of its words the sources contain at all; words
    of the question restate it and are not counted)."""
    claim = _CITE.sub("", sentence)
    arith = _ARITH.search(claim)
    if arith and _arithmetic_holds(arith.group(1), arith.group(2)):
        return 1.0
    words = set(content_words(claim))
    if not words:
        return 1.0  # nothing to support ("Here is what I found:")
    numbers = set(_NUMBER.findall(claim))
    units = [u for source in sources for u in _units(source)]
    bags = [_bag(u) for u in units]
    anywhere = set().union(*bags) if bags else set()
    present = {w for w in words if _has(w, anywhere)}
    if not present:
        return 0.0
    # Words in many lines ("protocol" in every comment) say little about which line is meant.
    weight = {w: math.log(1 + len(bags) / max(1, sum(1 for b in bags if _has(w, b))))
              for w in present}
    asked = _bag(question)
    best = 0.0
    for unit, bag in zip(units, bags, strict=True):
        # A word of the question missing from the line is often the question's framing
        # ("port" for a table row "ssh 22/tcp"): it costs half of what another word costs.
        missing = sum(weight[w] * (0.5 if _has(w, asked) else 1.0)
                      for w in present if not _has(w, bag))
        found = sum(weight[w] for w in present if _has(w, bag))
        score = found / (found + missing) if found else 0.0
        if numbers and not numbers <= set(_NUMBER.findall(unit)):
            score *= NUMBER_MISSING_FACTOR
        best = max(best, score)
    claimed = {w for w in words if w in present or not _has(w, asked)}
    coverage = len(present) / len(claimed) if claimed else 1.0
    # Squared: evidence split over two lines (a name here, its number there) is worth much
    # less than half of evidence found together.
    return best ** 2 * coverage


def _bag(unit: str) -> set[str]:
    have = set(content_words(unit))
    return have | {w.rstrip("s") for w in have}  # a crude stem: "ports" ~ "port"


def _has(word: str, bag: set[str]) -> bool:
    return word in bag or word.rstrip("s") in bag


def _arithmetic_holds(expression: str, result: str) -> bool:
    numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", expression)]
    ops = re.findall(r"(?<=[\d\s])[-+*/x×](?=\s*-?\d)", expression)
    if len(ops) != len(numbers) - 1:
        return False
    value = numbers[0]
    for op, n in zip(ops, numbers[1:], strict=True):
        if op == "+":
            value += n
        elif op == "-":
            value -= n
        elif op in "*x×":
            value *= n
        elif n:
            value /= n
    return abs(value - float(result)) <= 1e-6 * max(1.0, abs(value))


@dataclass(slots=True)
class Scores:
    groundedness: float
    relevance: float
    completeness: float
    sentences: list[dict[str, Any]] = field(default_factory=list)
    judge: str = "offline"

    @property
    def overall(self) -> float:
        return min(self.groundedness, self.relevance, self.completeness)

    def as_dict(self) -> dict[str, Any]:
        return {"groundedness": round(self.groundedness, 4), "relevance": round(self.relevance, 4),
                "completeness": round(self.completeness, 4), "overall": round(self.overall, 4),
                "judge": self.judge, "sentences": self.sentences}


SUPPORTED = 0.6  # a sentence scoring below this counts as unsupported


def evaluate(question: str, answer: str, sources: Mapping[int, str],
             expected_terms: Sequence[str] = (), steps_ok: float = 1.0) -> Scores:
    """`sources`: citation number -> text; `expected_terms`: what a complete answer names
    (the plan's entities); `steps_ok`: the fraction of plan steps that succeeded."""
    sentences = split_answer(answer)
    rows: list[dict[str, Any]] = []
    for sentence in sentences:
        cited = [int(n) for n in _CITE.findall(sentence)]
        texts = [sources[n] for n in cited if n in sources]
        if sentence.startswith(NOT_FOUND):
            continue  # says what is missing: no claim to ground (completeness counts it)
        if not texts and not _ARITH.search(sentence):
            score = 0.0 if content_words(sentence) else 1.0
        else:
            score = sentence_support(sentence, texts, question)
        rows.append({"sentence": sentence, "cited": cited, "score": round(score, 4),
                     "supported": score >= SUPPORTED})
    grounded = sum(r["score"] for r in rows) / len(rows) if rows else 0.0
    q_words = set(content_words(question))
    a_words = set(content_words(answer))
    relevance = len(q_words & a_words) / len(q_words) if q_words else 1.0
    named = [t for t in expected_terms if t]
    found = sum(1 for t in named if t.lower() in answer.lower())
    completeness = (found / len(named) if named else 1.0) * steps_ok
    return Scores(grounded, relevance, completeness, rows)


class LLMJudge:
    """The LLM as judge: one call that returns the three scores as JSON."""

    PROMPT = (
        "You grade an answer. Reply with JSON only: {\"groundedness\": x, \"relevance\": y, "
        "\"completeness\": z, \"unsupported\": [sentences]} with x, y, z between 0 and 1. "
        "groundedness: every sentence is supported by the numbered sources it cites. "
        "relevance: it answers the question asked. completeness: every part is answered.")

    def __init__(self, llm: LLM) -> None:
        self._llm = llm

    async def evaluate(self, question: str, answer: str, sources: Mapping[int, str],
                       offline: Scores) -> tuple[Scores, int]:
        listing = "\n".join(f"[{n}] {text[:1200]}" for n, text in sorted(sources.items()))
        done = await self._llm.complete([
            ChatMessage("system", self.PROMPT),
            ChatMessage("user", f"Question: {question}\n\nSources:\n{listing}\n\n"
                                f"Answer:\n{answer}")], temperature=0.0, max_tokens=300)
        tokens = done.prompt_tokens + done.completion_tokens
        try:
            raw = orjson.loads(json_part(done.text))
            g, r, c = (min(1.0, max(0.0, float(raw[k])))
                       for k in ("groundedness", "relevance", "completeness"))
            scores = Scores(g, r, c, sentences=offline.sentences, judge=self._llm.name)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            offline.judge = "offline (the judge's reply was not valid JSON)"
            return offline, tokens
        return scores, tokens


def json_part(text: str) -> str:
    start, end = text.find("{"), text.rfind("}")
    return text[start:end + 1] if 0 <= start < end else text
