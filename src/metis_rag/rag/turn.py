"""One question while it is answered (`Turn`): its scope, the cache keys it is stored under,
and the citations of its sources."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..cache.levels import digest, normalize_question
from ..config import LLMSettings, RetrievalSettings
from ..llm.base import ChatMessage
from ..schemas import ChatQuery, Citation, Timings
from ..store.lookup import CollectionRef
from .answer import PROMPT_VERSION
from .retriever import Retrieved

_SHAPES_KEPT = 256  # distinct option sets of questions without history


def elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


def citations_of(sources: list[Retrieved],
                 names: dict[int, str] | None = None) -> list[Citation]:
    """`names`: collection id -> name, when several were searched (each citation names its)."""
    return [
        Citation(
            index=i,
            document_id=r.chunk.document_id,
            filename=r.chunk.filename,
            folder=r.chunk.folder,
            page=r.chunk.page,
            section=r.chunk.section,
            chunk_id=r.chunk.id,
            position=r.chunk.position,
            score=round(r.score, 4),
            similarity=round(r.similarity, 4),
            snippet=r.chunk.text[:300],
            collection=names.get(r.chunk.collection_id) if names else None,
        )
        for i, r in enumerate(sources, start=1)
    ]


@dataclass(slots=True)
class Turn:
    """Everything known about one question while it is being answered."""

    query: ChatQuery
    tenant: str
    namespace: str
    collection_id: int
    version: int
    analysis_version: int
    conversation_id: str
    new_conversation: bool
    history: list[ChatMessage]
    shape: str
    started: float
    others: list[CollectionRef] = field(default_factory=list)  # more collections searched
    names: list[str] = field(default_factory=list)  # of the collection, then of the others
    timings: Timings = field(default_factory=Timings)
    vector: np.ndarray | None = None
    sources: list[Retrieved] = field(default_factory=list)
    retrieval_saved_ms: float | None = None
    retrieved: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def collection_names(self) -> dict[int, str] | None:
        """Collection id -> name when several are searched, else None (nothing to tell apart)."""
        if not self.others:
            return None
        ids = [self.collection_id, *(o.id for o in self.others)]
        return dict(zip(ids, self.names, strict=True))

    @property
    def use_cache(self) -> bool:
        return self.query.cache

    @property
    def retrieval_text(self) -> str:
        # A follow-up ("and the second one?") is retrieved together with the last question.
        last_user = next((m.content for m in reversed(self.history) if m.role == "user"), "")
        return f"{last_user}\n{self.query.message}" if last_user else self.query.message

    @property
    def reads_analysis(self) -> bool:
        """Whether the answer depends on the documents' analysis (a type/language/topic filter
        picks the documents searched): its keys then carry the analysis versions too."""
        q = self.query
        return q.doc_type is not None or q.language is not None or q.topic is not None

    @property
    def ref(self) -> CollectionRef:
        return CollectionRef(self.collection_id, self.version, self.analysis_version)

    def scopes(self) -> list[tuple[int, str]]:
        """Each collection searched with its ``namespace:id:version`` (retrieval cache keys)."""
        reads = self.reads_analysis
        return [(r.id, f"{self.namespace}:{r.id}:{r.key(reads)}")
                for r in (self.ref, *self.others)]

    @property
    def scope(self) -> str:
        reads = self.reads_analysis
        return f"{self.namespace}:{self.collection_id}:{self.ref.key(reads)}" + "".join(
            f"+{o.id}:{o.key(reads)}" for o in self.others
        )

    @property
    def exact_key(self) -> str:
        return f"{self.scope}:{digest(normalize_question(self.query.message), self.shape)}"

    @property
    def partition(self) -> tuple[str, ...]:
        reads = self.reads_analysis
        return (self.namespace, str(self.collection_id), self.ref.key(reads), self.shape,
                *(f"{o.id}:{o.key(reads)}" for o in self.others))


class AnswerShapes:
    """Everything besides the question that shapes an answer, as a digest in every answer key:
    the request's options, the retrieval and generation settings, the LLM, the history."""

    def __init__(self, retrieval: RetrievalSettings, generation: LLMSettings, llm: str) -> None:
        self._retrieval = retrieval
        self._generation = generation  # temperature and max_tokens of every completion
        self._llm = llm
        self._known: dict[tuple[Any, ...], str] = {}  # request options -> shape (no history)

    def of(self, query: ChatQuery, history: list[ChatMessage]) -> str:
        if history:
            return self._digest(query, history)
        # Without history the shape depends on the request's options alone (the settings are
        # fixed for the service's life): a dict lookup instead of a digest on every question.
        options = (query.use_rag, query.top_k, tuple(query.tags), query.folder, query.hybrid,
                   query.group_by, query.doc_type, query.language, query.topic)
        shape = self._known.get(options)
        if shape is None:
            if len(self._known) >= _SHAPES_KEPT:
                self._known.clear()
            shape = self._known[options] = self._digest(query, history)
        return shape

    def _digest(self, query: ChatQuery, history: list[ChatMessage]) -> str:
        r, llm = self._retrieval, self._generation
        return digest(
            query.use_rag, query.top_k or r.top_k, sorted(query.tags), query.folder,
            r.hybrid if query.hybrid is None else query.hybrid, r.candidates, r.rrf_k,
            query.group_by, r.fusion, r.term_weight, r.name_weight, r.phrase_weight, r.dense_weight,
            r.chunks_per_document, *_analysis_shape(query),
            self._llm, PROMPT_VERSION, llm.temperature, llm.max_tokens,
            [(m.role, m.content) for m in history],
        )


def _analysis_shape(query: ChatQuery) -> tuple[str, ...]:
    """The analysis filters, when any: unfiltered questions keep their old keys."""
    if query.doc_type is None and query.language is None and query.topic is None:
        return ()
    return ("analysis", repr((query.doc_type, query.language, query.topic)))
