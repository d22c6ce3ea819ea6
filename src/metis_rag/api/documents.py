"""/api/documents: upload, list, show, replace and delete documents."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from starlette.datastructures import UploadFile

from ..errors import ClientDisconnected, InvalidInput, MetisError
from ..ingest.parsers import sanitize_filename
from ..ingest.pipeline import Upload, clean_folder, clean_tags, sha256_hex
from ..schemas import NO_NUL, ChunkOut, DocumentDetail, DocumentOut, Page, UploadResponse, UploadResult
from ..store import browse, repo
from ..store.models import Document
from ..tasks import ids as task_ids
from ..tasks.types import Priority, TaskOut, TaskSpec
from .deps import ReaderDep, ServicesDep, WriterDep
from .tasks import shown

router = APIRouter(prefix="/api", tags=["documents"])

DocumentId = Annotated[str, Path(max_length=64, description="The document's public id.")]

MAX_FILES = 100

_MULTIPART_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "collection": {"type": "string", "default": "default"},
                        "tags": {"type": "string", "description": "Comma-separated tags."},
                        "folder": {"type": "string"},
                    },
                }
            }
        },
    }
}


# What Starlette's multipart errors mean, said for people (its own text names its internals).
_MULTIPART_PROBLEMS = [
    ("too many files", "too_many_files",
     f"An upload takes at most {MAX_FILES} files; send the rest in another request."),
    ("too many fields", "invalid_multipart", "The upload has more than 100 form fields."),
    ("exceeded maximum size", "invalid_multipart",
     "A form field other than a file is larger than 1 MB."),
    ("boundary", "invalid_multipart",
     "The Content-Type header of the upload has no multipart boundary."),
]


def _multipart_error(exc: Exception) -> InvalidInput:
    text = str(getattr(exc, "detail", "") or exc).lower()
    for needle, code, message in _MULTIPART_PROBLEMS:
        if needle in text:
            return InvalidInput(message, code=code)
    return InvalidInput("The upload is not valid multipart/form-data: its parts could not be "
                        "read.", code="invalid_multipart")


@asynccontextmanager
async def cancelled_on_disconnect(request: Request) -> AsyncIterator[None]:
    """Abandon the work inside (parsing a hostile file) as soon as the client goes away."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        yield
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        raise ClientDisconnected("The client went away; its upload was abandoned.") from None
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def _read_form(request: Request) -> tuple[list[tuple[str, bytes, str]], dict[str, str]]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidInput(
            "Send the files as multipart/form-data in a field named 'files'.",
            code="multipart_required",
        )
    try:
        form = await request.form(max_files=MAX_FILES, max_fields=100)
    except MetisError:
        raise
    except Exception as exc:
        raise _multipart_error(exc) from exc
    files: list[tuple[str, bytes, str]] = []
    fields: dict[str, str] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.append((value.filename or "upload", await value.read(),
                          value.content_type or ""))
            await value.close()
        else:
            fields[key] = value
    if not files:
        raise InvalidInput("No file was sent: use the multipart field 'files'.", code="no_files")
    return files, fields


def _tags(raw: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in raw.split(",") if t.strip())


@router.post(
    "/documents",
    response_model=UploadResponse,
    status_code=202,
    responses={200: {"model": UploadResponse, "description": "Every file was already stored."}},
    openapi_extra=_MULTIPART_SCHEMA,
    summary="Upload one or many files: validated now, ingested by background tasks",
)
async def upload_documents(request: Request, services: ServicesDep, who: WriterDep) -> Any:
    """202 with one `ingest_document` task per new file; 200 when every file is already stored.

    Every file is parsed before the answer, so a bad one (415, 413, 422) rejects the whole
    upload and nothing is stored; the task reuses that parse through the document cache.
    """
    started = time.perf_counter()
    files, fields = await _read_form(request)
    collection = fields.get("collection") or services.settings.default_collection
    repo.check_collection_name(collection)
    folder, tags = clean_folder(fields.get("folder", "")), clean_tags(_tags(fields.get("tags", "")))
    priority = _priority(fields.get("priority", "normal"))
    uploads = [Upload(name, data, folder=folder, tags=tags, content_type=ctype)
               for name, data, ctype in files]
    # Megabytes take milliseconds to hash: in a thread, not on the loop questions wait on.
    hashes = await asyncio.to_thread(lambda: [sha256_hex(u.data) for u in uploads])
    async with services.sessions() as session:
        stored = await repo.documents_by_hash(session, who.tenant, collection, hashes)
    new = [u for u, h in zip(uploads, hashes, strict=True) if h not in stored]
    # The storage quota first (a tenant over it spends no parser time), held until the tasks
    # are queued, when their sizes count as the tenant's queued ingestions.
    async with services.quotas.storage(who.tenant, len(new), sum(len(u.data) for u in new)):
        async with cancelled_on_disconnect(request):
            for upload, content_hash in zip(uploads, hashes, strict=True):
                # parsed to validate; chunking and embedding are the task's
                await services.ingestor.parse(upload, content_hash)
        results, specs = _queue(uploads, hashes, stored, collection, folder, tags, priority,
                                who.tenant)
        created = iter(await services.tasks.submit(specs) if specs else [])
    for r in results:
        if r.status == "queued":
            r.task_id = task_ids.public(next(created).id)
    request.state.audit_detail = {"collection": collection, "files": len(results)}
    body = UploadResponse(
        collection=collection, results=results, task_ids=[r.task_id for r in results if r.task_id],
        seconds=round(time.perf_counter() - started, 3),
    )
    return Response(body.model_dump_json(), status_code=202 if specs else 200,
                    media_type="application/json")


def _queue(
    uploads: list[Upload], hashes: list[str], stored: dict[str, tuple[str, int]],
    collection: str, folder: str, tags: tuple[str, ...], priority: Priority, tenant: str,
) -> tuple[list[UploadResult], list[TaskSpec]]:
    """One result per file, and the ingestion tasks of the new ones."""
    results: list[UploadResult] = []
    specs: list[TaskSpec] = []
    for upload, content_hash in zip(uploads, hashes, strict=True):
        filename = sanitize_filename(upload.filename)
        doc = stored.get(content_hash)
        if doc is not None:
            results.append(UploadResult(filename=filename, status="duplicate",
                                        document_id=doc[0], chunks=doc[1]))
            continue
        results.append(UploadResult(filename=filename, status="queued", document_id=None))
        specs.append(TaskSpec(
            "ingest_document", name=f"ingest {filename}"[:200], priority=priority,
            params={"collection": collection, "filename": filename, "folder": folder,
                    "tags": list(tags), "size_bytes": len(upload.data),
                    "content_type": upload.content_type, "tenant": tenant,
                    "content_hash": content_hash},
            blob=upload.data, tenant=tenant,
        ))
    return results, specs


def _priority(raw: str) -> Priority:
    try:
        return Priority[raw]
    except KeyError:
        raise InvalidInput(f"Priority {raw[:20]!r} is not one of low, normal, high, urgent, "
                           "critical.", code="invalid_priority") from None


def _out(doc: Document, collection: str) -> DocumentOut:
    fields = {name: getattr(doc, name) for name in DocumentOut.model_fields
              if name not in ("collection", "id")}
    return DocumentOut(id=doc.public_id, collection=collection, **fields)


async def _collection_names(services: ServicesDep, tenant: str) -> dict[int, str]:
    async with services.sessions() as session:
        return {c.id: c.name for c in await repo.list_collections(session, tenant)}


@router.get("/documents", response_model=Page[DocumentOut],
            summary="A page of documents, newest first, filtered and searched on the server")
async def list_documents(
    services: ServicesDep,
    who: ReaderDep,
    # No NUL in any text filter: PostgreSQL text cannot hold it (a 500 otherwise).
    collection: Annotated[str | None, Query(pattern=NO_NUL)] = None,
    tag: Annotated[str | None, Query(pattern=NO_NUL)] = None,
    folder: Annotated[str | None, Query(pattern=NO_NUL,
                                        description="This folder and the ones below it.")] = None,
    status: Annotated[str | None, Query(pattern=NO_NUL)] = None,
    doc_type: Annotated[str | None, Query(max_length=40, pattern=NO_NUL)] = None,
    language: Annotated[str | None, Query(max_length=16, pattern=NO_NUL)] = None,
    topic: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    q: Annotated[str | None, Query(max_length=200, pattern=NO_NUL,
                                   description="Words of the filename or title.")] = None,
    type: Annotated[str | None, Query(max_length=120, pattern=NO_NUL,
                                      description="A media type.")] = None,
) -> Page[DocumentOut]:
    async with services.sessions() as session:
        collection_id = ((await repo.get_collection(session, who.tenant, collection)).id
                         if collection else None)
        query = browse.DocumentQuery(collection_id=collection_id, search=(q or "").strip() or None,
                                     tag=tag, folder=folder, status=status, mime=type,
                                     analysis=repo.AnalysisFilter(
                                         doc_type=doc_type, language=language, topic=topic))
        items, total = await browse.search_documents(session, who.tenant, query,
                                                     limit=limit, offset=offset)
    names = await _collection_names(services, who.tenant)
    return Page[DocumentOut](
        items=[_out(d, names.get(d.collection_id, "")) for d in items],
        total=total, limit=limit, offset=offset,
    )


@router.get("/documents/{document_id}", response_model=DocumentDetail)
async def get_document(
    document_id: DocumentId, services: ServicesDep, who: ReaderDep, chunks: bool = False
) -> DocumentDetail:
    async with services.sessions() as session:
        doc, collection = await repo.document_and_collection(session, who.tenant, document_id)
        rows = [
            ChunkOut(id=c.id, position=c.position, text=c.text, page=c.page,
                     section=c.section, token_count=c.token_count)
            for c in (await repo.chunks_of_document(session, doc.id) if chunks else [])
        ]
    out = _out(doc, collection)
    return DocumentDetail(**out.model_dump(), chunks=rows)


@router.put(
    "/documents/{document_id}",
    response_model=TaskOut,
    status_code=202,
    openapi_extra=_MULTIPART_SCHEMA,
    summary="Replace a document's content: validated now, swapped by a background task",
)
async def replace_document(
    document_id: DocumentId, request: Request, services: ServicesDep, who: WriterDep
) -> TaskOut:
    """202 with the `ingest_document` task that swaps the chunks in one transaction, keeping the
    document's id, name and folder; until it completes the old content is served."""
    files, fields = await _read_form(request)
    if len(files) != 1:
        raise InvalidInput("Replace takes exactly one file.", code="one_file_expected")
    name, data, ctype = files[0]
    async with services.sessions() as session:
        old, collection = await repo.document_and_collection(session, who.tenant, document_id)
    tags = clean_tags(_tags(fields.get("tags", ""))) or tuple(old.tags)
    upload = Upload(old.filename, data, folder=old.folder, tags=tags, content_type=ctype)
    added = len(data) - old.size_bytes
    # Only the bytes it adds over the old content count: held from this check until the task is
    # queued, then counted as that task's `added_bytes` until it stores the new content.
    async with services.quotas.storage(who.tenant, 0, added):
        async with cancelled_on_disconnect(request):
            await services.ingestor.parse(upload)  # to validate; the task chunks and embeds
        spec = TaskSpec(
            "ingest_document", name=f"replace {old.filename}"[:200],
            priority=_priority(fields.get("priority", "normal")),
            params={"collection": collection, "filename": old.filename, "folder": old.folder,
                    "tags": list(tags), "size_bytes": len(data), "content_type": ctype,
                    "tenant": who.tenant, "replace": document_id, "added_bytes": max(0, added)},
            blob=data, tenant=who.tenant,
        )
        task = (await services.tasks.submit([spec]))[0]
    return shown(task)


@router.delete("/documents/{document_id}", status_code=204)
async def delete_document(
    document_id: DocumentId, services: ServicesDep, who: WriterDep
) -> Response:
    await services.ingestor.delete(who.tenant, document_id)
    return Response(status_code=204)
