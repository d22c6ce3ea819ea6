"""Queries the web page browses with: collections with their counts, a searchable page of
documents, the tags and folders to filter by, and a tenant's conversations. Every function takes
the tenant, like `repo`; callers own transactions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Select, case, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from .models import Collection, Conversation, Document, DocumentTag, Message
from .repo import AnalysisFilter, get_conversation, in_folder, like_escaped, tenant_collections


@dataclass(frozen=True, slots=True)
class CollectionCounts:
    name: str
    documents: int
    chunks: int
    size_bytes: int
    failed: int
    updated_at: datetime


async def collections_with_counts(session: AsyncSession, tenant: str) -> list[CollectionCounts]:
    """Every collection of the tenant (empty ones too) with its documents, chunks and bytes."""
    counts = (
        select(
            Document.collection_id.label("cid"),
            func.count(Document.id).label("docs"),
            func.coalesce(func.sum(Document.chunk_count), 0).label("chunks"),
            func.coalesce(func.sum(Document.size_bytes), 0).label("size"),
            func.sum(case((Document.status == "failed", 1), else_=0)).label("failed"),
        )
        .where(Document.collection_id.in_(tenant_collections(tenant)))
        .group_by(Document.collection_id)
        .subquery()
    )
    stmt = (
        select(Collection.name, counts.c.docs, counts.c.chunks, counts.c.size, counts.c.failed,
               Collection.updated_at)
        .outerjoin(counts, counts.c.cid == Collection.id)
        .where(Collection.tenant == tenant)
        .order_by(Collection.name)
    )
    return [CollectionCounts(r[0], int(r[1] or 0), int(r[2] or 0), int(r[3] or 0),
                             int(r[4] or 0), r[5])
            for r in await session.execute(stmt)]


@dataclass(frozen=True, slots=True)
class DocumentQuery:
    """What a page of documents is filtered by; None means no filter."""

    collection_id: int | None = None
    search: str | None = None  # in the filename or the title, case-insensitive
    tag: str | None = None
    folder: str | None = None  # this folder and the folders below it
    status: str | None = None
    mime: str | None = None
    analysis: AnalysisFilter = AnalysisFilter()  # type, language, topic (agent.analysis)


class _ContainsFolded(FunctionElement[bool]):
    """`column` contains `pattern` (a lower-case LIKE pattern, `\\` escapes), ignoring case."""

    type = Boolean()
    inherit_cache = True
    name = "contains_folded"


@compiles(_ContainsFolded)
def _contains_folded(element: _ContainsFolded, compiler: Any, **kw: Any) -> str:
    column, pattern = element.clauses
    return str(compiler.process(func.lower(column).like(pattern, escape="\\"), **kw))


@compiles(_ContainsFolded, "sqlite")
def _contains_folded_sqlite(element: _ContainsFolded, compiler: Any, **kw: Any) -> str:
    # SQLite's LIKE already ignores case (ASCII, as its lower() does), and without lower() the
    # column is compared as the index holds it: a search reads index entries, not rows (0020).
    column, pattern = element.clauses
    return str(compiler.process(column.like(pattern, escape="\\"), **kw))


def _filtered(stmt: Select[Any], tenant: str, q: DocumentQuery) -> Select[Any]:
    stmt = stmt.where(Document.collection_id.in_(tenant_collections(tenant)))
    if q.collection_id is not None:
        stmt = stmt.where(Document.collection_id == q.collection_id)
    if q.search:
        pattern = f"%{like_escaped(q.search.lower())}%"
        stmt = stmt.where(or_(_ContainsFolded(Document.filename, pattern),
                              _ContainsFolded(Document.title, pattern)))
    if q.folder is not None:
        stmt = stmt.where(in_folder(Document.folder, q.folder))
    if q.status is not None:
        stmt = stmt.where(Document.status == q.status)
    if q.mime is not None:
        stmt = stmt.where(Document.mime == q.mime)
    if q.tag is not None:
        stmt = stmt.where(
            Document.id.in_(select(DocumentTag.document_id).where(DocumentTag.tag == q.tag)))
    return q.analysis.apply(stmt)


async def search_documents(
    session: AsyncSession, tenant: str, q: DocumentQuery, *, limit: int, offset: int
) -> tuple[Sequence[Document], int]:
    """A page of documents, newest first, and how many match in all."""
    page = _filtered(select(Document), tenant, q).order_by(
        Document.created_at.desc(), Document.id.desc()).limit(limit).offset(offset)
    items = (await session.execute(page)).scalars().all()
    total = (await session.execute(_filtered(select(func.count(Document.id)), tenant, q)))
    return items, int(total.scalar_one())


@dataclass(frozen=True, slots=True)
class Facets:
    tags: list[tuple[str, int]]
    folders: list[tuple[str, int]]
    statuses: list[tuple[str, int]]
    types: list[tuple[str, int]]


async def facets(session: AsyncSession, tenant: str, collection_id: int | None,
                 limit: int = 200) -> Facets:
    """The values the documents can be filtered by, with how many documents carry each."""
    base = DocumentQuery(collection_id=collection_id)

    async def counted(column: Any, stmt: Any = None) -> list[tuple[str, int]]:
        stmt = stmt if stmt is not None else select(column, func.count(Document.id))
        stmt = _filtered(stmt, tenant, base).group_by(column)
        stmt = stmt.order_by(func.count(Document.id).desc(), column).limit(limit)
        return [(str(r[0]), int(r[1])) for r in await session.execute(stmt)]

    # From document_tags alone (its collection_id copy and index, 0020): no join per tag row.
    tag_stmt = select(DocumentTag.tag, func.count()).where(
        DocumentTag.collection_id.in_(tenant_collections(tenant)))
    if collection_id is not None:
        tag_stmt = tag_stmt.where(DocumentTag.collection_id == collection_id)
    tag_rows = await session.execute(tag_stmt.group_by(DocumentTag.tag)
                                     .order_by(func.count().desc(), DocumentTag.tag).limit(limit))
    tags = [(str(r[0]), int(r[1])) for r in tag_rows]
    return Facets(tags=tags, folders=await counted(Document.folder),
                  statuses=await counted(Document.status), types=await counted(Document.mime))


@dataclass(frozen=True, slots=True)
class ConversationRow:
    id: str
    collection: str
    title: str
    messages: int
    created_at: datetime
    updated_at: datetime


async def list_conversations(
    session: AsyncSession, tenant: str, *, limit: int, offset: int
) -> tuple[list[ConversationRow], int]:
    """The tenant's conversations, the most recently used first."""
    counts = (select(Message.conversation_id.label("cid"), func.count(Message.id).label("n"))
              .group_by(Message.conversation_id).subquery())
    stmt = (
        select(Conversation.id, Collection.name, Conversation.title, counts.c.n,
               Conversation.created_at, Conversation.updated_at)
        .join(Collection, Collection.id == Conversation.collection_id)
        .outerjoin(counts, counts.c.cid == Conversation.id)
        .where(Conversation.tenant == tenant)
        .order_by(Conversation.updated_at.desc(), Conversation.id)
        .limit(limit).offset(offset)
    )
    rows = [ConversationRow(r[0], r[1], r[2], int(r[3] or 0), r[4], r[5])
            for r in await session.execute(stmt)]
    total = await session.execute(
        select(func.count(Conversation.id)).where(Conversation.tenant == tenant))
    return rows, int(total.scalar_one())


async def rename_conversation(
    session: AsyncSession, tenant: str, conversation_id: str, title: str
) -> Conversation:
    conv = await get_conversation(session, tenant, conversation_id)
    await session.execute(update(Conversation).where(Conversation.id == conv.id)
                          .values(title=title[:200]))
    await session.refresh(conv)
    return conv


async def delete_conversation(session: AsyncSession, tenant: str, conversation_id: str) -> None:
    conv = await get_conversation(session, tenant, conversation_id)
    # Messages first: SQLite enforces the cascade only with its foreign keys pragma on.
    await session.execute(delete(Message).where(Message.conversation_id == conv.id))
    await session.execute(delete(Conversation).where(Conversation.id == conv.id))
