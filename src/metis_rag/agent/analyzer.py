"""Query analysis: is a question simple (today's fast path) or does it need a plan?

The rule-based analyser runs on every question of `mode="auto"`, so it is a handful of
precompiled regular expressions and no allocation-heavy work: a simple question costs a few
microseconds. It recognises four shapes and plans them without an LLM:

- arithmetic: "the sum of the ports of ssh and http", "the port of https minus the port of http"
- comparison: "which has the higher port, imaps or pop3s?"
- compound: "what is the port of smtp and what is the protocol number of udp?"
- multi-hop is left to the LLM planner (rules cannot see the bridge entity).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .plan import Plan, PlanKind, Step

_OPS = {
    "sum": "+", "total": "+", "add": "+", "plus": "+", "combined": "+", "together": "+",
    "difference": "-", "minus": "-", "subtract": "-", "more than": "-", "higher than": "-",
    "larger than": "-", "greater than": "-", "bigger than": "-", "less than": "-",
    "lower than": "-", "smaller than": "-",
    "product": "*", "times": "*", "multiplied": "*", "ratio": "/", "divided": "/",
}
_ARITH = re.compile(r"\b(sum|total|add|plus|combined|together|difference|minus|subtract|"
                    r"product|times|multiplied|ratio|divided|how (?:much|many) (?:more|"
                    r"higher|larger|greater|bigger|less|lower|smaller))\b", re.I)
_COMPARE = re.compile(r"\b(which|what|who)\b.*\b(higher|highest|lower|lowest|larger|largest|"
                      r"smaller|smallest|bigger|biggest|greater|greatest|more|less|fewer)\b"
                      r"|\bcompare\b", re.I)
_LOWEST = re.compile(r"\b(lower|lowest|smaller|smallest|less|fewer)\b", re.I)
# "what is X and what is Y", "X? Y?", "X; and also Y"
_COMPOUND = re.compile(r"\?\s+\S|\band\s+(?:what|which|who|how|where|when|why)\b|;\s*(?:and\s+)?"
                       r"(?:what|which|who|how|where|when|why)\b", re.I)
_QUICK = re.compile(r"\b(?:and|or|than|sum|total|plus|minus|difference|compare|times|product|"
                    r"ratio|divided|add|subtract|combined|together)\b|\?\s+\S|;", re.I)
_METRIC_OF = re.compile(r"(?:the\s+)?((?:[a-z\-]+\s+){0,2}?[a-z\-]+?)s?\s+(?:of|for)\s+"
                        r"(?:the\s+)?([A-Za-z0-9][\w.\-]*(?:\s*(?:,|\band\b|\bor\b)\s*"
                        r"(?!the\b)[A-Za-z0-9][\w.\-]*)*)(?![\w.\-])"
                        r"(?=\s*(?:[,.?;:!]|$|(?:and|or|plus|minus|than|to|times|divided|"
                        r"multiplied|together|combined|which|is|are|has|have)\b))", re.I)
_METRIC_NEAR = re.compile(r"\b(?:higher|highest|lower|lowest|larger|largest|smaller|smallest|"
                          r"bigger|biggest|greater|greatest)\s+([a-z]+(?:\s+number)?)|"
                          r"\bwhich\s+(?!one\b|has\b|is\b|of\b)([a-z]+(?:\s+number)?)", re.I)
_FROM_TO = re.compile(r"\bhow\s+(?:much|many)\s+(?:more|higher|larger|greater|bigger|less|"
                      r"lower|smaller|fewer)\b|\bthan\b", re.I)
_SPLIT_LIST = re.compile(r"\s*(?:,\s*(?:and\s+|or\s+)?|\band\b|\bor\b)\s*", re.I)
_TAIL_LIST = re.compile(r"[,:]\s*([A-Za-z0-9][\w.\-]*(?:\s*(?:,|\bor\b|\band\b)\s*"
                        r"[A-Za-z0-9][\w.\-]*)+)\s*\??\s*$", re.I)
SEARCH_TOP_K = 8  # a figure's row may rank below passages that merely mention the entity
_STOP_METRIC = {"sum", "total", "difference", "product", "ratio", "value", "values", "the",
                "what", "is", "are", "one", "which", "add", "compare"}


@dataclass(frozen=True, slots=True)
class Analysis:
    kind: PlanKind
    reason: str

    @property
    def simple(self) -> bool:
        return self.kind == "simple"


SIMPLE = Analysis("simple", "no compound, comparison or arithmetic cue")


def analyse(question: str) -> Analysis:
    """Classify a question; the common case (no cue word at all) returns after one search."""
    if _QUICK.search(question) is None and _ARITH.search(question) is None:
        return SIMPLE
    if _ARITH.search(question) and len(_entities(question)[1]) >= 2:
        return Analysis("arithmetic", "arithmetic over two or more figures")
    if _COMPARE.search(question) and len(_entities(question)[1]) >= 2:
        return Analysis("comparison", "a comparison of two or more entities")
    if len(_parts(question)) >= 2:
        return Analysis("compound", "two or more questions in one")
    return SIMPLE


def _clean_metric(metric: str) -> str:
    words = metric.lower().split()
    if "of" in words:  # "sum of the port" -> "port"
        words = words[len(words) - words[::-1].index("of"):]
    words = [w for w in words if w not in _STOP_METRIC]
    words = [w for w in words if w not in {"higher", "lower", "larger", "smaller", "bigger",
                                           "greater", "highest", "lowest"}] or words
    return " ".join(words[-2:])


def _entities(question: str) -> tuple[str, list[str], dict[str, str]]:
    """(metric, entities, metric by entity): "the port of ssh and the protocol number of tcp"
    -> ("port", ["ssh", "tcp"], {"ssh": "port", "tcp": "protocol"})."""
    metric = ""
    entities: list[str] = []
    metrics: dict[str, str] = {}
    for m in _METRIC_OF.finditer(question):
        names = [n.strip(".") for n in _SPLIT_LIST.split(m.group(2)) if n and n.lower() != "the"]
        cleaned = _clean_metric(m.group(1))
        if cleaned and not metric:
            metric = cleaned
        for name in names:
            metrics.setdefault(name, cleaned)
        entities += names
    if not metric:
        near = _METRIC_NEAR.search(question)
        if near:
            metric = _clean_metric(near.group(1) or near.group(2) or "")
    tail = _TAIL_LIST.search(question)
    if tail and len(entities) < 2:
        entities += [n for n in _SPLIT_LIST.split(tail.group(1)) if n]
    seen: dict[str, None] = {}
    for e in entities:
        if e.lower() not in _STOP_METRIC:
            seen.setdefault(e, None)
    return metric, list(seen), {e: metrics.get(e) or metric for e in seen}


def _parts(question: str) -> list[str]:
    pieces = re.split(r"\?\s+|;\s*(?:and\s+)?|,?\s+and\s+(?=(?:what|which|who|how|where|when|"
                      r"why)\b)", question.strip(), flags=re.I)
    return [p.strip(" ?") + "?" for p in pieces if len(p.strip(" ?").split()) >= 2]


def _operator(question: str) -> str:
    q = question.lower()
    if _FROM_TO.search(q):
        return "-"
    for words, op in sorted(_OPS.items(), key=lambda kv: -len(kv[0])):
        if re.search(r"\b" + words + r"\b", q):
            return op
    return "+"


def _figure_steps(entities: list[str], metrics: dict[str, str]) -> list[Step]:
    steps: list[Step] = []
    for n, entity in enumerate(entities, start=1):
        metric = metrics.get(entity, "")
        search, figure = f"s{2 * n - 1}", f"s{2 * n}"
        query = f"{entity} {metric}".strip()
        steps.append(Step(search, "tool", "rag_search", {"query": query, "top_k": SEARCH_TOP_K},
                          purpose=f"find the {metric or 'figure'} of {entity}"))
        steps.append(Step(figure, "figure", "figure", {"entity": entity, "source": search,
                                                       "metric": metric},
                          after=(search,), purpose=f"the {metric or 'figure'} of {entity}"))
    return steps


def rule_plan(question: str, analysis: Analysis | None = None) -> Plan:
    """The offline plan of a complex question; a simple one is one `rag_search`."""
    analysis = analysis or analyse(question)
    kind = analysis.kind
    if kind in ("arithmetic", "comparison"):
        metric, entities, metrics = _entities(question)
        steps = _figure_steps(entities, metrics)
        figures = [s.id for s in steps if s.op == "figure"]
        if kind == "arithmetic":
            op = _operator(question)
            expression = f" {op} ".join("{" + f + "}" for f in figures)
            steps.append(Step(f"s{len(steps) + 1}", "tool", "calculator",
                              {"expression": expression}, after=tuple(figures),
                              purpose=f"the {metric or 'figures'} combined ({op})"))
        else:
            want = "lowest" if _LOWEST.search(question) else "highest"
            steps.append(Step(f"s{len(steps) + 1}", "compare", "compare",
                              {"figures": figures, "want": want, "metric": metric},
                              after=tuple(figures), purpose=f"the {want} {metric}".strip()))
        return Plan(kind, question, tuple(steps))
    if kind == "compound":
        steps = []
        for n, part in enumerate(_parts(question), start=1):
            metric, entities, _ = _entities(part)
            if metric and len(entities) == 1:  # "what is the port of smtp": a figure
                search, figure = f"s{2 * n - 1}", f"s{2 * n}"
                steps.append(Step(search, "tool", "rag_search",
                                  {"query": f"{entities[0]} {metric}", "top_k": SEARCH_TOP_K},
                                  purpose=part))
                steps.append(Step(figure, "figure", "figure",
                                  {"entity": entities[0], "source": search, "metric": metric},
                                  after=(search,), purpose=part))
            else:
                steps.append(Step(f"s{2 * n - 1}", "tool", "rag_search", {"query": part},
                                  purpose=part))
        return Plan("compound", question, tuple(steps))
    return Plan("simple", question, (Step("s1", "tool", "rag_search", {"query": question},
                                          purpose=question),))
