"""Queries over the relational schema. Functions take an `AsyncSession`, or a synchronous
`Connection` where the caller runs a whole transaction in one thread hop (the document write);
callers own transactions."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, Table, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from ..errors import InvalidInput, NotFound
from .models import (
    Chunk,
    Collection,
    Conversation,
    Document,
    DocumentTag,
    DocumentTopic,
    Message,
)

_COLLECTIONS: Table = Collection.__table__
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")


def check_collection_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidInput(
            f"Collection name {name!r} is invalid: use 1-200 letters, digits, '.', '_' or '-'.",
            code="invalid_collection",
        )
    return name


# Every query a request can reach takes the tenant as a required argument, so a route cannot
# forget it; `ALL_TENANTS` is for the server's own maintenance (reconcile, the CLI's operator).
ALL_TENANTS = None


async def get_collection(session: AsyncSession, tenant: str, name: str) -> Collection:
    row = (await session.execute(select(Collection).where(
        Collection.tenant == tenant, Collection.name == name))).scalar()
    if row is None:
        raise NotFound(f"Collection {name!r} does not exist.", code="collection_not_found")
    return row


async def get_or_create_collection(session: AsyncSession, tenant: str, name: str) -> Collection:
    check_collection_name(name)
    row = (await session.execute(select(Collection).where(
        Collection.tenant == tenant, Collection.name == name))).scalar()
    if row is None:
        row = Collection(tenant=tenant, name=name, version=1, analysis_version=0)
        session.add(row)
        await session.flush()
    return row


# Built once: building a statement costs more than running it on a small table.
_COLLECTION_ID = select(_COLLECTIONS.c.id).where(
    _COLLECTIONS.c.tenant == bindparam("tenant"), _COLLECTIONS.c.name == bindparam("name"))
_NEW_COLLECTION = insert(_COLLECTIONS).returning(_COLLECTIONS.c.id)
_VERSION_BUMP = (update(_COLLECTIONS).where(_COLLECTIONS.c.id == bindparam("collection_id"))
                 .values(version=_COLLECTIONS.c.version + 1, updated_at=func.now()))


def collection_id_for_writing(conn: Connection, tenant: str, name: str) -> int:
    """`get_or_create_collection`'s id in Core statements (each ingestion's commit asks)."""
    check_collection_name(name)
    found = conn.execute(_COLLECTION_ID, {"tenant": tenant, "name": name}).scalar()
    if found is not None:
        return int(found)
    return int(conn.execute(_NEW_COLLECTION, {
        "tenant": tenant, "name": name, "version": 1, "analysis_version": 0}).scalar_one())


async def list_collections(session: AsyncSession, tenant: str | None) -> Sequence[Collection]:
    stmt = select(Collection).order_by(Collection.name)
    if tenant is not None:
        stmt = stmt.where(Collection.tenant == tenant)
    return (await session.execute(stmt)).scalars().all()


def tenant_collections(tenant: str) -> Select[Any]:
    return select(Collection.id).where(Collection.tenant == tenant)


def version_bump(conn: Connection, collection_id: int) -> None:
    """The collection's content changed: every cached result of it becomes unreachable.
    A Core statement: the ORM's bulk update path cost more than the statement itself, and no
    caller reads the version back from a loaded row."""
    conn.execute(_VERSION_BUMP, {"collection_id": collection_id})


async def bump_version(session: AsyncSession, collection_id: int) -> None:
    await session.execute(_VERSION_BUMP, {"collection_id": collection_id})


async def bump_analysis_version(session: AsyncSession, collection_id: int) -> None:
    """A document's analysis changed: only results that read the analysis become unreachable
    (they key on both versions); plain answers keep their keys."""
    await session.execute(
        update(Collection)
        .where(Collection.id == collection_id)
        .values(analysis_version=Collection.analysis_version + 1)
    )


async def invalidate_collection(session: AsyncSession, tenant: str, name: str) -> None:
    """Bump the tenant's collection's version: every cached answer of it becomes unreachable."""
    await bump_version(session, (await get_collection(session, tenant, name)).id)


def no_document(public_id: str) -> NotFound:
    return NotFound(f"Document {public_id[:40]!r} does not exist.", code="document_not_found")


async def get_document(session: AsyncSession, tenant: str, public_id: str) -> Document:
    """Another tenant's document is not found, with the same message as a missing one."""
    doc = (await session.execute(select(Document).where(
        Document.public_id == public_id,
        Document.collection_id.in_(tenant_collections(tenant))))).scalar()
    if doc is None:
        raise no_document(public_id)
    return doc


async def document_and_collection(
    session: AsyncSession, tenant: str, public_id: str
) -> tuple[Document, str]:
    """The tenant's document and the name of its collection."""
    doc = await get_document(session, tenant, public_id)
    return doc, (await session.get_one(Collection, doc.collection_id)).name


async def documents_by_hash(
    session: AsyncSession, tenant: str, collection: str, hashes: Sequence[str]
) -> dict[str, tuple[str, int]]:
    """Documents of the tenant's collection that already hold these bytes: hash -> (id, chunks)."""
    coll = (await session.execute(select(Collection.id).where(
        Collection.tenant == tenant, Collection.name == collection))).scalar()
    if coll is None:
        return {}
    rows = await session.execute(
        select(Document.content_hash, Document.public_id, Document.chunk_count).where(
            Document.collection_id == coll, Document.content_hash.in_(hashes)))
    return {r[0]: (r[1], r[2]) for r in rows}


async def chunks_of_document(session: AsyncSession, document_id: int) -> Sequence[Chunk]:
    """A document's chunks in reading order."""
    return (await session.execute(select(Chunk).where(
        Chunk.document_id == document_id).order_by(Chunk.position))).scalars().all()


@dataclass(frozen=True, slots=True)
class AnalysisFilter:
    """Filters on a document's analysis (agent.analysis): None matches anything."""

    doc_type: str | None = None
    language: str | None = None
    topic: str | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.doc_type, self.language, self.topic))

    def apply(self, stmt: Select[Any]) -> Select[Any]:
        if self.doc_type is not None:
            stmt = stmt.where(Document.doc_type == self.doc_type)
        if self.language is not None:
            stmt = stmt.where(Document.language == self.language)
        if self.topic is not None:
            stmt = stmt.where(Document.id.in_(select(DocumentTopic.document_id).where(
                DocumentTopic.topic == self.topic.lower())))
        return stmt


def _document_filter(
    stmt: Select[Any], tenant: str, collection_id: int | None, tag: str | None,
    folder: str | None, status: str | None, analysis: AnalysisFilter | None = None,
) -> Select[Any]:
    stmt = stmt.where(Document.collection_id.in_(tenant_collections(tenant)))
    if analysis is not None:
        stmt = analysis.apply(stmt)
    if collection_id is not None:
        stmt = stmt.where(Document.collection_id == collection_id)
    if folder is not None:
        stmt = stmt.where(Document.folder == folder)
    if status is not None:
        stmt = stmt.where(Document.status == status)
    if tag is not None:
        stmt = stmt.where(
            Document.id.in_(select(DocumentTag.document_id).where(DocumentTag.tag == tag))
        )
    return stmt


async def list_documents(
    session: AsyncSession,
    tenant: str,
    *,
    collection_id: int | None = None,
    tag: str | None = None,
    folder: str | None = None,
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
    analysis: AnalysisFilter | None = None,
) -> tuple[Sequence[Document], int]:
    stmt = _document_filter(select(Document), tenant, collection_id, tag, folder, status,
                            analysis)
    items = (
        await session.execute(
            stmt.order_by(Document.created_at.desc(), Document.id.desc()).limit(limit).offset(offset)
        )
    ).scalars().all()
    count_stmt = _document_filter(select(func.count(Document.id)), tenant, collection_id, tag,
                                  folder, status, analysis)
    total = (await session.execute(count_stmt)).scalar_one()
    return items, int(total)


def set_tags(conn: Connection, document_id: int, collection_id: int,
             tags: Sequence[str], *, new: bool = False) -> None:
    """The document's tag rows become `tags` (`new`: it has none yet, nothing to delete)."""
    if not new:
        conn.execute(delete(DocumentTag).where(DocumentTag.document_id == document_id))
    if tags:
        conn.execute(insert(DocumentTag.__table__), [
            {"tag": tag, "document_id": document_id, "collection_id": collection_id}
            for tag in dict.fromkeys(tags)])


async def chunk_ids_of(session: AsyncSession, document_id: int) -> list[int]:
    rows = await session.execute(select(Chunk.id).where(Chunk.document_id == document_id))
    return [r[0] for r in rows]


async def chunk_ids_of_collection(session: AsyncSession, collection_id: int) -> set[int]:
    rows = await session.execute(select(Chunk.id).where(Chunk.collection_id == collection_id))
    return {r[0] for r in rows}


async def embeddings_of(session: AsyncSession, chunk_ids: Sequence[int]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for start in range(0, len(chunk_ids), 900):
        part = chunk_ids[start : start + 900]
        rows = await session.execute(select(Chunk.id, Chunk.embedding).where(Chunk.id.in_(part)))
        out.extend((r[0], r[1]) for r in rows)
    return out


def like_escaped(text: str) -> str:
    """`text` as a LIKE pattern that matches it literally (with `escape="\\"`)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def in_folder(column: Any, folder: str) -> ColumnElement[bool]:
    """`column` (a document's folder) is `folder` or below it. The folder is matched as it is:
    a `_` or `%` in its name is no LIKE wildcard (a question's folder filter took them for
    wildcards and searched other folders too)."""
    return or_(column == folder, column.like(f"{like_escaped(folder)}/%", escape="\\"))


async def allowed_chunk_ids(
    session: AsyncSession, collection_id: int, tags: Sequence[str], folder: str | None,
    analysis: AnalysisFilter | None = None,
) -> list[int]:
    """Chunk ids of the collection's documents that carry every tag and sit in the folder
    (and match the analysis filter)."""
    docs = select(Document.id).where(Document.collection_id == collection_id)
    if analysis is not None:
        docs = analysis.apply(docs)
    if folder is not None:
        docs = docs.where(in_folder(Document.folder, folder))
    for tag in tags:
        docs = docs.where(
            Document.id.in_(select(DocumentTag.document_id).where(DocumentTag.tag == tag))
        )
    rows = await session.execute(select(Chunk.id).where(Chunk.document_id.in_(docs)))
    return [r[0] for r in rows]


@dataclass(frozen=True, slots=True)
class ChunkRow:
    id: int
    document_id: str  # the document's public id
    filename: str
    folder: str
    position: int
    text: str
    page: int | None
    section: str | None
    embedding: bytes
    collection_id: int = 0  # the collection's internal id (which one, when several are searched)


async def chunks_by_ids(session: AsyncSession, ids: Sequence[int]) -> dict[int, ChunkRow]:
    if not ids:
        return {}
    stmt = (
        select(
            Chunk.id, Document.public_id, Document.filename, Document.folder, Chunk.position,
            Chunk.text, Chunk.page, Chunk.section, Chunk.embedding, Document.collection_id,
        )
        .join(Document, Document.id == Chunk.document_id)
        .where(Chunk.id.in_(list(ids)))
    )
    return {r[0]: ChunkRow(*tuple(r)) for r in await session.execute(stmt)}


async def create_conversation(
    session: AsyncSession, tenant: str, collection_id: int, title: str
) -> Conversation:
    conv = Conversation(id=uuid.uuid4().hex, tenant=tenant, collection_id=collection_id,
                        title=title[:200])
    session.add(conv)
    await session.flush()
    return conv


async def get_conversation(
    session: AsyncSession, tenant: str, conversation_id: str
) -> Conversation:
    conv = await session.get(Conversation, conversation_id)
    if conv is None or conv.tenant != tenant:
        raise NotFound(
            f"Conversation {conversation_id[:40]!r} does not exist.", code="conversation_not_found"
        )
    return conv


async def recent_messages(
    session: AsyncSession, conversation_id: str, limit: int
) -> list[Message]:
    stmt = (
        select(Message)
        .where(Message.conversation_id == conversation_id)
        .order_by(Message.id.desc())
        .limit(limit)
    )
    return list(reversed((await session.execute(stmt)).scalars().all()))
