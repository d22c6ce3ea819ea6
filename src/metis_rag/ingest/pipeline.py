"""Ingestion: bytes in, parsed, chunked, embedded, and written with their vectors.

Parsing and chunking run in parser processes (`sandbox`; chunking in a worker thread when the
embedder's tokenizer exists only in this process) while the embedder works on the previous
group, so the model is the only bottleneck. A document and all its chunks (with their embeddings)
are committed in one transaction; the vector index is updated after the commit and is
reconciled with the database at start-up, so a crash never leaves a chunk without its vector
or a vector without its chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from sqlalchemy import Table, and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..cache.tiered import TieredCache
from ..embed.base import Embedder
from ..errors import InvalidInput, PayloadTooLarge
from ..schemas import MAX_TAGS
from ..store import repo
from ..store.db import Transactions
from ..store.models import Chunk, Document, DocumentTopic, new_public_id
from ..store.vectors import ChunkColumnVectors, VectorStore
from .chunker import ChunkDraft, Chunker
from .parsers import ParsedDocument, Section, detect_type, sanitize_filename
from .sandbox import ParseSandbox
from .sniff import check_content_type

# Text past this is chunked one document at a time: a few such files at once would hold
# every core and their chunk lists the memory, while normal files go on in parallel.
BIG_TEXT_CHARS = 1_000_000
_DOCUMENTS: Table = Document.__table__
_CHUNKS: Table = Chunk.__table__
# The document write's statements, built once (building one cost more than running it).
_FOUND = select(_DOCUMENTS.c.id, _DOCUMENTS.c.public_id, _DOCUMENTS.c.chunk_count,
                _DOCUMENTS.c.content_hash).order_by(_DOCUMENTS.c.id)
_SAME_BYTES = _DOCUMENTS.c.content_hash == bindparam("hash")
_FIND_BY_PATH = _FOUND.where(
    _DOCUMENTS.c.collection_id == bindparam("collection_id"),
    or_(_SAME_BYTES, and_(_DOCUMENTS.c.folder == bindparam("folder"),
                          _DOCUMENTS.c.filename == bindparam("filename"))))
_FIND_BY_ID = _FOUND.where(_DOCUMENTS.c.collection_id == bindparam("collection_id"),
                           or_(_SAME_BYTES, _DOCUMENTS.c.public_id == bindparam("replaces")))
_NEW_DOCUMENT = insert(_DOCUMENTS).returning(_DOCUMENTS.c.id, _DOCUMENTS.c.public_id)
_TAG_MAX = 100


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str
    data: bytes
    folder: str = ""
    tags: tuple[str, ...] = ()
    content_type: str = ""  # as the client declared it; must agree with the name and bytes
    replaces: str = ""  # the public id of the document this content replaces (PUT), if any


@dataclass(slots=True)
class Prepared:
    upload: Upload
    filename: str
    content_hash: str
    mime: str
    parsed: ParsedDocument
    chunks: list[ChunkDraft]


@dataclass(slots=True)
class Staged:
    prepared: list[Prepared]
    vectors: list[np.ndarray]


@dataclass(slots=True)
class IngestResult:
    filename: str
    status: Literal["created", "replaced", "duplicate", "failed"]
    document_id: str | None = None  # the public id
    chunks: int = 0
    error: dict[str, Any] | None = None


@dataclass(slots=True)
class IngestReport:
    results: list[IngestResult] = field(default_factory=list)

    @property
    def chunks(self) -> int:
        return sum(r.chunks for r in self.results)


@dataclass(slots=True)
class _Written:
    """What a write transaction did, for the vector index to follow after the commit."""
    collection_id: int
    report: IngestReport = field(default_factory=IngestReport)
    removed: list[int] = field(default_factory=list)
    added: list[tuple[list[int], np.ndarray]] = field(default_factory=list)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _no_nul(value: str, field: str) -> None:
    # PostgreSQL text cannot hold NUL: refused here as input, not failed in the database.
    if "\x00" in value:
        raise InvalidInput(f"Invalid request in '{field}': a NUL character is not allowed.")


def clean_folder(folder: str) -> str:
    _no_nul(folder, "folder")
    parts = [p for p in folder.replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise InvalidInput("Folder may not contain '..'.", code="invalid_folder")
    return "/".join(parts)[:500]


def clean_tags(tags: Iterable[str]) -> tuple[str, ...]:
    out = []
    for tag in tags:
        _no_nul(tag, "tags")
        tag = tag.strip()
        if not tag:
            continue
        if len(tag) > _TAG_MAX:
            raise InvalidInput(f"Tag {tag[:20]!r}... is longer than {_TAG_MAX} characters.")
        out.append(tag)
    unique = tuple(dict.fromkeys(out))
    if len(unique) > MAX_TAGS:
        raise InvalidInput(f"A document carries at most {MAX_TAGS} tags; {len(unique)} were given.")
    return unique


class Ingestor:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        embedder: Embedder,
        vectors: VectorStore,
        chunker: Chunker,
        *,
        max_bytes: int,
        parser: ParseSandbox,
        transactions: Transactions,
        document_cache: TieredCache | None = None,
    ) -> None:
        """`transactions` runs the document write (on SQLite, on a thread of its own)."""
        self._transactions = transactions
        self._document_cache = document_cache
        self._parser = parser
        self._sessions = sessions
        self._embedder = embedder
        self._vectors = vectors
        self._chunker = chunker
        self._max_bytes = max_bytes
        # Vectors that live in `chunks` are written by the chunk INSERT, in its transaction.
        self._chunk_table: Table = Chunk.__table__
        self._vector_column = ""
        if isinstance(vectors, ChunkColumnVectors):
            self._chunk_table, self._vector_column = vectors.chunk_table, vectors.vector_column
        self._inline = bool(self._vector_column)
        table = self._chunk_table
        self._insert_chunks = insert(table)
        self._chunk_ids = (select(table.c.id).where(table.c.document_id == bindparam("document_id"))
                           .order_by(table.c.position))
        # One writer at a time keeps SQLite free of lock contention and the index consistent.
        self._write_lock = asyncio.Lock()
        self._big_chunking = asyncio.Semaphore(1)

    def check(self, upload: Upload) -> tuple[str, str]:
        """The file's safe name and type, refusing it when too big or not what it claims to be."""
        filename = sanitize_filename(upload.filename)
        if len(upload.data) > self._max_bytes:
            raise PayloadTooLarge(
                f"{filename} is {len(upload.data)} bytes; the limit is {self._max_bytes} bytes."
            )
        mime = detect_type(filename, upload.data[:8192])
        check_content_type(filename, mime, upload.content_type)
        return filename, mime

    def prepare(
        self, upload: Upload, parsed: ParsedDocument, stop: threading.Event | None = None
    ) -> Prepared:
        """Validate and chunk one parsed file (CPU-bound; call it from a worker thread). Setting
        `stop` makes it raise `ChunkingStopped` within a tokenizer batch."""
        filename, _ = self.check(upload)
        return self._prepared(upload, parsed, self._chunker.chunk(parsed, stop, filename))

    def _prepared(self, upload: Upload, parsed: ParsedDocument,
                  chunks: list[ChunkDraft]) -> Prepared:
        filename, mime = self.check(upload)
        if not chunks:
            raise InvalidInput(f"{filename} has no text to index.", code="empty_document")
        return Prepared(
            upload=upload,
            filename=filename,
            content_hash=hashlib.sha256(upload.data).hexdigest(),
            mime=mime,
            parsed=parsed,
            chunks=chunks,
        )

    async def parse(self, upload: Upload, content_hash: str = "") -> ParsedDocument:
        """Check the file and parse it in the sandbox, or reuse a parse of the same bytes from
        the document cache (keyed by `content_hash`, the sha256 of the bytes, hashed here when
        not given). What an upload request does to validate its files."""
        self.check(upload)  # cheap refusals first: no parser process for a file named wrong
        cache = self._document_cache
        if cache is None:
            return await self._parser.parse(upload.data, upload.filename)
        # Hashing megabytes takes milliseconds: not on the event loop, where questions wait.
        content_hash = content_hash or await asyncio.to_thread(sha256_hex, upload.data)
        key = content_hash + ":" + sanitize_filename(upload.filename)
        cached = await cache.get(key)
        if cached is not None:
            return ParsedDocument(
                title=cached["title"], mime=cached["mime"],
                sections=[Section(text=t, page=p, heading=h) for t, p, h in cached["sections"]],
            )
        parsed = await self._parser.parse(upload.data, upload.filename)
        await cache.set(key, {"title": parsed.title, "mime": parsed.mime,
                              "sections": [[s.text, s.page, s.heading] for s in parsed.sections]})
        return parsed

    async def prepare_async(self, upload: Upload) -> Prepared:
        """`parse`, then chunk in a parser process when the sandbox can (a huge text's chunking
        holds the GIL for seconds in C calls: in a thread it stalled every request), else in a
        worker thread. Cancelling it kills that process, or stops the chunking thread (cancelling
        `to_thread` alone leaves the thread running, and a huge file's chunking would pile up
        behind each retry of it)."""
        parsed = await self.parse(upload)
        if self._parser.chunking is not None:
            chunks = await self._parser.chunk(parsed, upload.filename)
            # In a thread: hashing a file of many megabytes would hold up the event loop.
            return await asyncio.to_thread(self._prepared, upload, parsed, chunks)
        big = sum(len(s.text) for s in parsed.sections) > BIG_TEXT_CHARS
        stop = threading.Event()
        async with self._big_chunking if big else contextlib.nullcontext():
            try:
                return await asyncio.to_thread(self.prepare, upload, parsed, stop)
            finally:
                stop.set()  # a no-op once the thread has returned

    async def ingest(
        self, uploads: Sequence[Upload], collection: str, tenant: str = "default"
    ) -> IngestReport:
        """All-or-nothing ingestion of a request's files: any bad file rejects them all."""
        return await self.commit(collection, await self.stage(uploads), tenant)

    async def stage(
        self, uploads: Sequence[Upload], progress: Callable[[float, str], None] | None = None,
        embed: Callable[[Sequence[str]], Awaitable[np.ndarray]] | None = None,
    ) -> Staged:
        """Validates, parses, chunks and embeds (with `embed`, else the embedder); writes
        nothing, so cancelling it leaves no trace."""
        prepared = []
        for upload in uploads:
            prepared.append(await self.prepare_async(upload))
            if progress:
                progress(40 * len(prepared) / len(uploads), "parsed")
        vectors = await self.embed_prepared(prepared, embed)
        if progress:
            progress(100, f"embedded {sum(len(p.chunks) for p in prepared)} chunks")
        return Staged(prepared, vectors)

    async def commit(self, collection: str, staged: Staged, tenant: str = "default", *,
                     analysis_pending: bool = False) -> IngestReport:
        """Writes staged documents, their chunks and embeddings in one transaction. With
        `analysis_pending` (the caller queues their analysis) they say so until it stores.

        A cancel arriving once the write has started waits for it (the transaction runs on in
        its thread) and for the vector index to take what it committed, then propagates."""
        async with self._write_lock:
            write = asyncio.ensure_future(self._write(
                tenant, collection, staged.prepared, staged.vectors, analysis_pending))
            try:
                return await asyncio.shield(write)
            except asyncio.CancelledError:
                await asyncio.wait([write])
                if not write.cancelled():
                    write.exception()  # the cancel is what the caller hears; no "never retrieved"
                raise

    async def embed_prepared(
        self, group: Sequence[Prepared],
        embed: Callable[[Sequence[str]], Awaitable[np.ndarray]] | None = None,
    ) -> list[np.ndarray]:
        texts = [c.text for p in group for c in p.chunks]
        embed = embed or self._embedder.embed
        matrix = await embed(texts) if texts else np.zeros((0, 0), np.float32)
        out, start = [], 0
        for p in group:
            out.append(matrix[start : start + len(p.chunks)])
            start += len(p.chunks)
        return out

    async def _write(
        self, tenant: str, collection: str, group: Sequence[Prepared],
        vectors: Sequence[np.ndarray], analysis_pending: bool,
    ) -> IngestReport:
        def work(conn: Connection) -> _Written:
            return self._write_all(conn, tenant, collection, group, vectors, analysis_pending)

        written = await self._transactions.run(work)
        if self._inline:
            return written.report
        if written.removed:
            await self._vectors.delete(written.collection_id, written.removed)
        for ids, matrix in written.added:
            await self._vectors.add(written.collection_id, ids, matrix)
        return written.report

    def _write_all(
        self, conn: Connection, tenant: str, collection: str, group: Sequence[Prepared],
        vectors: Sequence[np.ndarray], analysis_pending: bool,
    ) -> _Written:
        """The whole transaction, in synchronous Core statements: on SQLite it is one hop to
        the writer's thread, where through aiosqlite each of a document's statements was a hop
        back to the event loop (and the ORM's flushes and loads were most of ingestion's CPU
        beside the model, about 11 ms a document on the loop)."""
        collection_id = repo.collection_id_for_writing(conn, tenant, collection)
        written = _Written(collection_id)
        seen: dict[str, str] = {}
        for prep, matrix in zip(group, vectors, strict=True):
            result, old_ids, new_ids = self._write_one(
                conn, collection_id, prep, matrix, seen, analysis_pending)
            written.report.results.append(result)
            written.removed.extend(old_ids)
            if new_ids:
                written.added.append((new_ids, matrix))
        if written.removed or written.added:
            repo.version_bump(conn, collection_id)
        return written

    def _write_one(
        self,
        conn: Connection,
        collection_id: int,
        prep: Prepared,
        matrix: np.ndarray,
        seen: dict[str, str],
        analysis_pending: bool,
    ) -> tuple[IngestResult, list[int], list[int]]:
        folder = clean_folder(prep.upload.folder)
        tags = clean_tags(prep.upload.tags)
        if prep.content_hash in seen:
            return IngestResult(prep.filename, "duplicate", seen[prep.content_hash]), [], []
        D = _DOCUMENTS
        replaces = prep.upload.replaces
        # One look-up: the same bytes (a duplicate), else the replace's target or the same path.
        found = conn.execute(_FIND_BY_ID if replaces else _FIND_BY_PATH, {
            "collection_id": collection_id, "hash": prep.content_hash, "replaces": replaces,
            "folder": folder, "filename": prep.filename}).all()
        duplicate = next((r for r in found if r.content_hash == prep.content_hash), None)
        if duplicate is not None:
            return (IngestResult(prep.filename, "duplicate", duplicate.public_id,
                                 duplicate.chunk_count), [], [])
        if replaces and not found:
            raise repo.no_document(replaces)
        values: dict[str, Any] = {
            "content_hash": prep.content_hash, "mime": prep.mime,
            "size_bytes": len(prep.upload.data),
            "title": (prep.parsed.title or None) and prep.parsed.title[:500],
            "tags": list(tags), "status": "ready", "error": None,
            "chunk_count": len(prep.chunks),
            "analysis": {"status": "pending"} if analysis_pending else None,
        }
        old_ids: list[int] = []
        status: Literal["created", "replaced"] = "created"
        if not found:
            doc_id, public_id = conn.execute(_NEW_DOCUMENT, {
                "public_id": new_public_id(), "collection_id": collection_id,
                "filename": prep.filename, "folder": folder, **values}).one()
        else:
            status = "replaced"
            doc_id, public_id = found[0].id, found[0].public_id
            old_ids = list(conn.execute(
                select(_CHUNKS.c.id).where(_CHUNKS.c.document_id == doc_id)).scalars())
            conn.execute(delete(_CHUNKS).where(_CHUNKS.c.document_id == doc_id))
            # The old content's analysis does not describe the new content.
            conn.execute(delete(DocumentTopic).where(DocumentTopic.document_id == doc_id))
            conn.execute(update(D).where(D.c.id == doc_id).values(
                doc_type=None, language=None, summary=None, topics=[], **values))
        repo.set_tags(conn, doc_id, collection_id, tags, new=status == "created")
        rows = [
            {
                "document_id": doc_id,
                "collection_id": collection_id,
                "position": c.position,
                "text": c.text,
                "page": c.page,
                "section": (c.section or None) and c.section[:500],
                "token_count": c.token_count,
                "embedding": np.ascontiguousarray(matrix[i], dtype="<f4").tobytes(),
            }
            for i, c in enumerate(prep.chunks)
        ]
        if self._inline:
            for row, vector in zip(rows, matrix, strict=True):
                row[self._vector_column] = vector
        # One executemany, then the ids by position: the document's chunks are all new here. An
        # INSERT ... RETURNING in parameter order ran one statement per chunk on SQLite (no
        # sentinel column).
        conn.execute(self._insert_chunks, rows)
        new_ids = list(conn.execute(self._chunk_ids, {"document_id": doc_id}).scalars())
        seen[prep.content_hash] = public_id
        return IngestResult(prep.filename, status, public_id, len(new_ids)), old_ids, new_ids

    async def delete(self, tenant: str, document_id: str) -> None:
        async with self._write_lock:
            async with self._sessions() as session, session.begin():
                doc = await repo.get_document(session, tenant, document_id)
                ids = await repo.chunk_ids_of(session, doc.id)
                collection_id = doc.collection_id
                await session.execute(delete(Chunk).where(Chunk.document_id == doc.id))
                await session.delete(doc)
                await repo.bump_version(session, collection_id)
            if not self._inline:  # an inline vector went with its chunk
                await self._vectors.delete(collection_id, ids)
                await self._vectors.flush()
