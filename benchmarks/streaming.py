"""The synchronous streaming pipeline Metis ingested with before tasks, kept as a baseline for
bench_ingest_tasks.py: one stream, parsing pipelined with embedding, chunks of many documents
per model batch, a bad file reported instead of fatal. Built on the Ingestor's own steps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from metis_rag.errors import MetisError
from metis_rag.ingest.pipeline import Ingestor, IngestReport, IngestResult, Prepared, Staged, Upload
from metis_rag.store.vectors import VectorStore

# Chunks embedded together across small documents, so model batches stay full.
GROUP_CHUNKS = 256


async def ingest_stream(
    ingestor: Ingestor, vectors: VectorStore, uploads: Iterable[Upload], collection: str,
    tenant: str = "default",
) -> IngestReport:
    """Ingest many files, pipelining parsing with embedding; a bad file is reported, not fatal."""
    report = IngestReport()
    async for group, failures in _prepared_groups(ingestor, uploads):
        report.results.extend(failures)
        if group:
            staged = Staged(group, await ingestor.embed_prepared(group))
            report.results.extend((await ingestor.commit(collection, staged, tenant)).results)
    await vectors.flush()
    return report


async def _prepared_groups(
    ingestor: Ingestor, uploads: Iterable[Upload]
) -> AsyncIterator[tuple[list[Prepared], list[IngestResult]]]:
    queue: asyncio.Queue[Prepared | IngestResult | None] = asyncio.Queue(maxsize=16)

    async def produce() -> None:
        try:
            for upload in uploads:
                try:
                    item: Prepared | IngestResult = await ingestor.prepare_async(upload)
                except MetisError as exc:
                    item = IngestResult(upload.filename, "failed", error=exc.to_dict())
                await queue.put(item)
        finally:
            await queue.put(None)

    producer = asyncio.create_task(produce())
    try:
        done = False
        while not done:
            group: list[Prepared] = []
            failures: list[IngestResult] = []
            n_chunks = 0
            item = await queue.get()
            while True:
                if item is None:
                    done = True
                    break
                if isinstance(item, IngestResult):
                    failures.append(item)
                else:
                    group.append(item)
                    n_chunks += len(item.chunks)
                if n_chunks >= GROUP_CHUNKS or queue.empty():
                    break
                item = await queue.get()
            yield group, failures
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
