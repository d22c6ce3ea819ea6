"""Picking documents by their analysis: the topics and types a plan's searches narrow to.

Before planning, agent mode reads which topics and document types the collection's documents
were analysed with (`agent.analysis`; one query, bounded). The rule planner narrows a
`rag_search` step to a topic or type its query names as a whole word ("ssh" does not match
"sshd" nor "ssh-keygen"); `rag_search` itself falls back to the whole collection when the
narrowed search finds nothing, so narrowing can cut noise but never empties an answer. The LLM
planner is shown the most frequent topics and types and decides itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from ..store.models import Document, DocumentTopic
from ..store.repo import tenant_collections
from .plan import Plan

MAX_ROWS = 5000  # (topic or type, document) pairs read: 8 keywords a document, ~600 documents
PROMPT_TOPICS = 30  # shown to the LLM planner
_WORD = r"(?<![\w.\-])(?:{})(?![\w\-]|\.\w)"


@dataclass(frozen=True, slots=True)
class Profile:
    """A collection's analysed topics and document types, each with the documents that have it."""

    topics: Mapping[str, frozenset[int]] = field(default_factory=dict)
    doc_types: Mapping[str, frozenset[int]] = field(default_factory=dict)
    _topic_re: re.Pattern[str] | None = field(default=None, init=False, repr=False,
                                              compare=False)
    _type_re: re.Pattern[str] | None = field(default=None, init=False, repr=False,
                                             compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_topic_re", _pattern(self.topics))
        object.__setattr__(self, "_type_re", _pattern(self.doc_types))

    def focus(self, text: str) -> dict[str, str]:
        """The filters `text` names: {"topic": ..., "doc_type": ...} (either may be absent).

        Several topics named must agree on at least one document ("zephyr timeout" when one
        document has both); then the rarest of them narrows. Topics of different documents
        ("the default timeout of zephyr", where "default timeout" is another document's topic)
        are ambiguous: no topic narrows, rather than maybe the wrong one."""
        out: dict[str, str] = {}
        if self._topic_re is not None:
            named = {m.group(0).lower() for m in self._topic_re.finditer(text)}
            if named and frozenset.intersection(*(self.topics[t] for t in named)):
                out["topic"] = min(named, key=lambda t: (len(self.topics[t]), -len(t), t))
        if self._type_re is not None:
            types = {m.group(0).lower() for m in self._type_re.finditer(text)}
            if len(types) == 1:
                out["doc_type"] = types.pop()
        return out

    def describe(self, limit: int = PROMPT_TOPICS) -> str:
        """For the LLM planner's prompt: "topics: ssh (3), tcp (2)\ntypes: manual (4)"."""
        def top(found: Mapping[str, frozenset[int]]) -> str:
            ranked = sorted(found.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:limit]
            return ", ".join(f"{t} ({len(d)})" for t, d in ranked) or "none analysed"
        return f"topics: {top(self.topics)}\ntypes: {top(self.doc_types)}"


def _pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    names = sorted({w for w in words if w}, key=lambda w: (-len(w), w))
    if not names:
        return None
    return re.compile(_WORD.format("|".join(re.escape(w) for w in names)), re.I)


async def load_profile(session: AsyncSession, tenant: str, collection_ids: Sequence[int],
                       limit: int = MAX_ROWS) -> Profile:
    """One query: which of the collections' documents have which topic and type (bounded)."""
    docs = select(Document.id).where(Document.collection_id.in_(list(collection_ids)),
                                     Document.collection_id.in_(tenant_collections(tenant)))
    topics = select(literal("topic").label("kind"), DocumentTopic.topic.label("name"),
                    DocumentTopic.document_id.label("doc")).where(
        DocumentTopic.document_id.in_(docs))
    types = select(literal("type").label("kind"), Document.doc_type.label("name"),
                   Document.id.label("doc")).where(Document.id.in_(docs),
                                                   Document.doc_type.is_not(None))
    rows: list[Any] = list((await session.execute(union_all(topics, types).limit(limit))).all())
    found: dict[str, dict[str, set[int]]] = {"topic": {}, "type": {}}
    for kind, name, doc in rows:
        found[kind].setdefault(str(name).lower(), set()).add(int(doc))
    return Profile(topics={k: frozenset(v) for k, v in found["topic"].items()},
                   doc_types={k: frozenset(v) for k, v in found["type"].items()})


def narrow(plan: Plan, profile: Profile) -> tuple[Plan, dict[str, dict[str, str]]]:
    """The plan with each `rag_search` step narrowed to what its own query names, and the
    filters chosen per step (for the process log)."""
    chosen: dict[str, dict[str, str]] = {}
    steps = []
    for step in plan.steps:
        focus = profile.focus(str(step.arguments.get("query", ""))) \
            if step.op == "tool" and step.name == "rag_search" else {}
        if focus:
            chosen[step.id] = focus
            step = replace(step, arguments={**step.arguments, **focus})
        steps.append(step)
    if not chosen:
        return plan, chosen
    return Plan(plan.kind, plan.question, tuple(steps), plan.planner), chosen
