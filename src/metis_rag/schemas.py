"""The JSON shapes of the HTTP API (also printed by `metis ... --json`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

# No NUL character: PostgreSQL text cannot hold one, so a filter or a question carrying it would
# fail in the database (a 500) instead of being refused as input (422 invalid_input).
NO_NUL = r"^[^\x00]*$"
NoNul = Annotated[str, Field(pattern=NO_NUL)]
# Tags a document carries, and so a question's tag filter names, at most: each filter tag is
# one more subquery, and 20,000 of them were a 500 on PostgreSQL.
MAX_TAGS = 100

# Characters that show nothing: a question made only of these and spaces is empty.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))


class ErrorBody(BaseModel):
    code: str = Field(examples=["document_not_found"])
    message: str = Field(examples=["Document 42 does not exist."])
    details: dict[str, Any] | None = None


class DocumentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="Public id: 22 random URL-safe characters (not sequential).")
    collection: str
    filename: str
    folder: str
    title: str | None
    mime: str
    size_bytes: int
    content_hash: str
    tags: list[str]
    status: str
    error: str | None = None
    chunk_count: int
    created_at: datetime
    updated_at: datetime
    doc_type: str | None = Field(None, description="From the document analysis: invoice, "
                                 "contract, policy, manual, report, paper, email, faq, code, "
                                 "data or article (null until analysed).")
    language: str | None = Field(None, description="ISO 639-1 code, `und` when undetermined.")
    topics: list[str] = Field(default_factory=list, description="Keywords, most important "
                              "first.")
    summary: str | None = None
    analysis: dict[str, Any] | None = Field(None, description="How it was analysed: status, "
                                            "method (llm | offline), model, ms.")
    analysis_status: Literal["pending", "done", "failed"] | None = Field(
        None, description="The analysis runs as a low-priority task once the document is "
        "searchable: `pending` until it stores (type, language, topics and summary are null "
        "meanwhile), `failed` when it could not; null when analysis is off.")


class UploadResult(BaseModel):
    filename: str
    status: Literal["created", "replaced", "duplicate", "failed", "queued"]
    document_id: str | None
    chunks: int = 0
    error: ErrorBody | None = None
    task_id: str | None = Field(None, description="The ingest_document task of a queued file.")


class UploadResponse(BaseModel):
    collection: str
    results: list[UploadResult]
    seconds: float
    task_ids: list[str] = Field(default_factory=list, description="Poll GET /api/tasks/{id}.")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class ChunkOut(BaseModel):
    id: int
    position: int
    text: str
    page: int | None
    section: str | None
    token_count: int


class DocumentDetail(DocumentOut):
    chunks: list[ChunkOut] = []


class ChatQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=8000, pattern=NO_NUL)
    collection: str | None = Field(None, pattern=NO_NUL,
                                   description="Defaults to METIS_DEFAULT_COLLECTION.")
    collections: list[NoNul] | None = Field(
        None, min_length=1, max_length=8,
        description="Instead of collection: search these at once and fuse the results. The "
        "conversation belongs to the first.",
    )
    conversation_id: str | None = Field(None, pattern=NO_NUL)
    use_rag: bool = True
    top_k: int | None = Field(None, ge=1, le=50)
    stream: bool = False
    tags: list[NoNul] = Field(default_factory=list, max_length=MAX_TAGS,
                              description="Only chunks carrying every tag.")
    folder: str | None = Field(None, pattern=NO_NUL,
                               description="Only documents in this folder (or below).")
    doc_type: str | None = Field(None, max_length=40, pattern=NO_NUL,
                                 description="Only documents of this "
                                 "analysed type (invoice, contract, report...).")
    language: str | None = Field(None, max_length=16, pattern=NO_NUL,
                                 description="Only documents in this "
                                 "language (ISO 639-1, from the analysis).")
    topic: str | None = Field(None, max_length=100, pattern=NO_NUL,
                              description="Only documents with this "
                              "topic (from the analysis).")
    hybrid: bool | None = Field(None, description="Override METIS_RETRIEVAL__HYBRID.")
    group_by: Literal["chunk", "document"] = Field(
        "chunk", description="document: the top_k distinct documents, each with its best "
        "chunks (METIS_RETRIEVAL__CHUNKS_PER_DOCUMENT), together and in the order of each "
        "document's best chunk.",
    )
    cache: bool = Field(True, description="false bypasses every cache level for this request.")
    namespace: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.\-]{1,100}$",
        description="Tenant namespace for the cache (else X-Metis-Namespace, else the default).",
    )
    mode: Literal["fast", "agent", "auto"] = Field(
        "fast", description="fast: one retrieval and one answer; agent: the question is "
        "planned into steps that call tools (METIS_AGENT__*); auto: the query analyser picks "
        "agent for compound, comparison and arithmetic questions, fast otherwise.",
    )


    @field_validator("message")
    @classmethod
    def _has_words(cls, v: str) -> str:
        if not v.translate(_INVISIBLE).strip():
            raise PydanticCustomError("empty_question", "the question is empty (only spaces)")
        return v

    @model_validator(mode="after")
    def _one_way_to_name_collections(self) -> ChatQuery:
        if self.collections is not None:
            if self.collection is not None:
                raise ValueError("give collection or collections, not both")
            self.collections = list(dict.fromkeys(self.collections))
        return self


class Citation(BaseModel):
    index: int = Field(description="The number the answer cites as [index].")
    document_id: str
    filename: str
    folder: str
    page: int | None
    section: str | None
    chunk_id: int
    position: int
    score: float = Field(description="The score that ranked the chunk: the fused score (0-1) "
                         "in hybrid mode, the cosine similarity in dense-only mode.")
    similarity: float = Field(description="Cosine similarity of the chunk to the question.")
    snippet: str
    collection: str | None = Field(None, description="The collection the passage was found "
                                   "in, when the question searched several (`collections`).")


class Timings(BaseModel):
    embed: float = 0.0
    retrieve: float = 0.0
    generate: float = 0.0
    total: float = 0.0


class CacheInfo(BaseModel):
    level: Literal["exact", "semantic", "retrieval", "llm"] | None = Field(
        None, description="The cache level that served this answer, or null for a full run."
    )
    similarity: float | None = Field(None, description="Semantic hits: cosine similarity.")
    original_question: str | None = Field(None, description="Semantic hits: the cached question.")
    saved_ms: float | None = Field(None, description="Time the hit saved, estimated.")
    score: float | None = Field(
        None, description="Semantic hits: the equivalence score (0-1) of the two questions."
    )
    threshold: float | None = Field(
        None, description="Semantic hits: the score needed under METIS_CACHE__SEMANTIC_MAX_ERROR."
    )
    checks: list[str] | None = Field(
        None, description="Semantic hits: the checks the two questions passed (similarity, "
        "identifiers, question_type, negation, order_direction, score)."
    )
    probability: float | None = Field(
        None, description="Semantic hits: calibrated probability that the two questions ask the "
        "same thing (share of held-out calibration pairs scored at least as high that did)."
    )


class AgentInfo(BaseModel):
    query_id: str = Field(description="GET /api/queries/{query_id}/audit shows every step.")
    analysis: str = Field(description="simple, compound, comparison, arithmetic or multi_hop.")
    planner: str
    steps: list[dict[str, Any]] = Field(description="Each step: id, op, name, status, ms.")
    scores: dict[str, Any] = Field(description="groundedness, relevance, completeness (0-1), "
                                   "the judge, and each sentence's support.")
    rounds: int = Field(0, description="Refinement rounds run.")


class ChatAnswer(BaseModel):
    answer: str
    citations: list[Citation]
    conversation_id: str
    mode: Literal["extractive", "llm"]
    model: str | None = None
    timings_ms: Timings
    usage: dict[str, int] = Field(default_factory=dict)
    cost: float = Field(0.0, description="Estimated LLM cost of this answer: its tokens x "
                        "METIS_CACHE__PRICE_PER_1K_TOKENS; 0 when no model was called for it "
                        "(a cache hit, an extractive answer).")
    warnings: list[str] = Field(default_factory=list)
    cache: CacheInfo = Field(default_factory=CacheInfo)
    agent: AgentInfo | None = Field(None, description="Agent mode: the plan and its scores.")


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    role: str
    content: str
    citations: list[dict[str, Any]]
    created_at: datetime


class ConversationOut(BaseModel):
    id: str
    collection: str
    title: str
    created_at: datetime
    messages: list[MessageOut]


class ComponentHealth(BaseModel):
    status: Literal["ok", "degraded", "down", "disabled"]
    detail: str = ""
    latency_ms: float | None = None


class Health(BaseModel):
    status: Literal["ok", "degraded", "down"]
    version: str
    components: dict[str, ComponentHealth]
