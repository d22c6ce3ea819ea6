"""One question while it is answered (`Turn`): its scope, the cache keys it is stored under,
and the citations of its sources."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..cache.levels import digest, normalize_question
from ..llm.base import ChatMessage
from ..schemas import ChatQuery, Citation, Timings
from ..store.lookup import CollectionRef
from .retriever import Retrieved


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
