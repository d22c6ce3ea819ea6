"""The analysis step of ingestion: read a stored document's text, analyse it, store the result.

It runs as the low-priority task `analyse_document`, queued by `ingest_document` once the
document's chunks are committed: a document is searchable before it is analysed, and its
`analysis` says {"status": "pending"} meanwhile. A failing analysis never undoes an
ingestion: it is logged and the document says {"status": "failed"}.
Storing (a result or a failure) bumps the collection's analysis version, not its version:
what reads the analysis (filters by type/language/topic, `list_documents`) keys on both, plain
answers only on the version, so they stay cached while the analyses of an upload arrive.
"""

from __future__ import annotations

import contextlib
import logging

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..store import repo
from ..store.models import Chunk, Document, DocumentTopic
from .analysis import MAX_ANALYSED_CHARS, Analysis, DocumentAnalyzer

log = logging.getLogger("metis.analysis")


async def document_text(session: AsyncSession, document_id: int) -> str:
    parts: list[str] = []
    size = 0
    rows = await session.stream_scalars(
        select(Chunk.text).where(Chunk.document_id == document_id).order_by(Chunk.position))
    async for text in rows:
        parts.append(text)
        size += len(text)
        if size >= MAX_ANALYSED_CHARS:
            break
    return "\n\n".join(parts)


async def analyse_document(sessions: async_sessionmaker[AsyncSession],
                           analyzer: DocumentAnalyzer, public_id: str) -> Analysis | None:
    """Analyse and store; None when the document is gone or the analysis failed."""
    try:
        async with sessions() as session:
            doc = (await session.execute(
                select(Document).where(Document.public_id == public_id))).scalar()
            if doc is None:
                return None
            text = await document_text(session, doc.id)
            filename, mime, doc_id = doc.filename, doc.mime, doc.id
        result = await analyzer.analyse(filename, mime, text)
        await store_analysis(sessions, doc_id, result)
        return result
    except Exception as exc:
        log.exception("analysis of document %s failed; it stays unanalysed", public_id)
        with contextlib.suppress(Exception):  # the database may be what failed
            await _store_failure(sessions, public_id, type(exc).__name__)
        return None


async def analysis_pending(sessions: async_sessionmaker[AsyncSession], public_id: str) -> bool:
    """Whether the document waits for an analysis (a crash may have lost its queued task)."""
    async with sessions() as session:
        analysis = (await session.execute(
            select(Document.analysis).where(Document.public_id == public_id))).scalar()
    return isinstance(analysis, dict) and analysis.get("status") == "pending"


async def _store_failure(sessions: async_sessionmaker[AsyncSession], public_id: str,
                         error: str) -> None:
    async with sessions() as session, session.begin():
        doc = (await session.execute(
            select(Document).where(Document.public_id == public_id))).scalar()
        if doc is not None:
            doc.analysis = {"status": "failed", "error": error}
            await repo.bump_analysis_version(session, doc.collection_id)  # listings show it


async def store_analysis(sessions: async_sessionmaker[AsyncSession], document_id: int,
                         result: Analysis) -> None:
    async with sessions() as session, session.begin():
        doc = await session.get(Document, document_id)
        if doc is None:
            return
        doc.doc_type = result.doc_type
        doc.language = result.language
        doc.topics = list(result.topics)
        doc.summary = result.summary
        doc.analysis = {"status": "done", "method": result.method, **result.details}
        await session.execute(delete(DocumentTopic).where(
            DocumentTopic.document_id == document_id))
        for topic in dict.fromkeys(t[:100] for t in result.topics):
            session.add(DocumentTopic(topic=topic, document_id=document_id))
        await repo.bump_analysis_version(session, doc.collection_id)
