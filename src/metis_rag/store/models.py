"""The relational schema: collections, documents, chunks, conversations and messages.

Every query path of the API has an index here; the Alembic migration in
`metis_rag/migrations` creates the same schema (plus the full-text index, which is
dialect-specific and so lives only in the migration).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always read back in UTC with its zone: SQLite keeps no zone and
    returns naive values, which the API would print without one (no OpenAPI date-time)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def new_public_id() -> str:
    """A document's public id: 16 random bytes, URL-safe (22 characters)."""
    return secrets.token_urlsafe(16)


# SQLite's INTEGER PRIMARY KEY is its rowid (needed by FTS5's content_rowid); BigInteger
# elsewhere so PostgreSQL ids do not run out.
IdType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}
    # Every model here maps one Table (SQLAlchemy types it as any FromClause, which has no
    # insert/update/delete): say so once instead of casting at each Core statement.
    if TYPE_CHECKING:
        __table__: ClassVar[Table]


class Collection(Base):
    __tablename__ = "collections"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_collections_tenant_name"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    # Every row below a collection (documents, chunks, conversations) belongs to its tenant.
    tenant: Mapped[str] = mapped_column(String(64), default="default")
    name: Mapped[str] = mapped_column(String(200))
    # Bumped on every add/replace/delete of a document: caches key on it.
    version: Mapped[int] = mapped_column(Integer, default=1)
    # Bumped when a document's analysis is stored (migration 0022): only what reads the
    # analysis (filters by type/language/topic, list_documents) keys on it too, so plain
    # answers cached before an analysis stay hits after it.
    analysis_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("collection_id", "content_hash", name="uq_documents_collection_hash"),
        Index("ix_documents_collection_path", "collection_id", "folder", "filename"),
        # Migration 0020: on SQLite this index also holds filename and title (a search reads
        # the index, not the rows); the counts and filter values read only index entries.
        Index("ix_documents_collection_created", "collection_id", "created_at", "id"),
        Index("ix_documents_collection_counts", "collection_id", "status", "chunk_count",
              "size_bytes"),
        Index("ix_documents_collection_mime", "collection_id", "mime"),
        Index("ix_documents_status", "status"),
        Index("ix_documents_collection_type", "collection_id", "doc_type"),
        Index("ix_documents_collection_language", "collection_id", "language"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    # What the API shows: random, so ids cannot be enumerated (the integer stays internal).
    public_id: Mapped[str] = mapped_column(String(32), unique=True, index=True,
                                           default=new_public_id)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(255))
    folder: Mapped[str] = mapped_column(String(500), default="")
    content_hash: Mapped[str] = mapped_column(String(64))
    mime: Mapped[str] = mapped_column(String(120))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    title: Mapped[str | None] = mapped_column(String(500), nullable=True)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(20), default="ready")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )
    # Document analysis (agent.analysis, migration 0010); None until the document is analysed.
    doc_type: Mapped[str | None] = mapped_column(String(40), nullable=True)
    language: Mapped[str | None] = mapped_column(String(16), nullable=True)
    topics: Mapped[list[Any]] = mapped_column(JSON, default=list)
    summary: Mapped[str | None] = mapped_column(Text, nullable=True)
    # How it was analysed: status, method (llm | offline), the model, time taken. The analysis
    # runs as a task after the ingestion commits: {"status": "pending"} until it stores.
    analysis: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    @property
    def analysis_status(self) -> str | None:
        """pending, done or failed; None when the document was never queued for analysis.
        Analyses stored before the status existed are done."""
        if not self.analysis:
            return None
        return str(self.analysis.get("status", "done"))


class DocumentTopic(Base):
    """One row per (topic, document), as DocumentTag: the topic filter is an index lookup."""

    __tablename__ = "document_topics"

    topic: Mapped[str] = mapped_column(String(100), primary_key=True)
    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class DocumentTag(Base):
    """One row per (tag, document): the tag filter is an index lookup, not a JSON scan."""

    __tablename__ = "document_tags"

    __table_args__ = (Index("ix_document_tags_collection_tag", "collection_id", "tag"),)

    tag: Mapped[str] = mapped_column(String(100), primary_key=True)
    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    # The document's collection, copied (0020): the tag filter's values are counted per
    # collection from the index alone, without joining each tag row to its document.
    collection_id: Mapped[int | None] = mapped_column(IdType, nullable=True)


class Chunk(Base):
    __tablename__ = "chunks"
    __table_args__ = (
        Index("ix_chunks_document_position", "document_id", "position"),
        Index("ix_chunks_collection", "collection_id"),
        {"sqlite_autoincrement": True},  # ids are never reused: see the migration
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    # Denormalised from the document so that vector reconciliation and filters need no join.
    collection_id: Mapped[int] = mapped_column(IdType)
    position: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    page: Mapped[int | None] = mapped_column(Integer, nullable=True)
    section: Mapped[str | None] = mapped_column(String(500), nullable=True)
    token_count: Mapped[int] = mapped_column(Integer)
    # float32 little-endian, written in the same transaction as the chunk: the vector
    # index is rebuilt from these after a crash, never re-embedded.
    embedding: Mapped[bytes] = mapped_column(LargeBinary)


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    tenant: Mapped[str] = mapped_column(String(64), default="default")
    title: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_conversation", "conversation_id", "id"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    role: Mapped[str] = mapped_column(String(20))
    content: Mapped[str] = mapped_column(Text)
    citations: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
