"""Chunking that stops when its ingestion is cancelled, and the chunk limit per document."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from metis_rag.config import ParseSettings
from metis_rag.errors import ChunkingStopped, ParseLimitExceeded
from metis_rag.ingest.chunker import COUNT_BATCH, HUGE_UNIT_CHARS, Chunker
from metis_rag.ingest.parsers import ParsedDocument, Section
from metis_rag.ingest.pipeline import Ingestor, Upload
from metis_rag.ingest.sandbox import ParseSandbox


def words(texts: Sequence[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def many_sentences(n: int) -> str:
    return " ".join(f"Sentence number {i} is here." for i in range(n))


def test_setting_stop_ends_chunking_at_the_next_batch() -> None:
    stop = threading.Event()
    counted: list[int] = []

    def counter(texts: Sequence[str]) -> list[int]:
        counted.append(len(texts))
        stop.set()  # the ingestion is cancelled while the first batch is counted
        return words(texts)

    doc = ParsedDocument(None, "text/plain", [Section(many_sentences(COUNT_BATCH * 5), None, None)])
    with pytest.raises(ChunkingStopped):
        Chunker(counter, 64, 8).chunk(doc, stop)
    assert counted == [COUNT_BATCH]  # four fifths of the text were never looked at


def test_a_document_past_the_chunk_limit_is_refused_before_packing() -> None:
    doc = ParsedDocument(None, "text/plain", [Section(many_sentences(2000), None, None)])
    needed = len(Chunker(words, 64, 8).chunk(doc))
    assert len(Chunker(words, 64, 8, max_chunks=needed).chunk(doc)) == needed

    calls: list[int] = []

    def counter(texts: Sequence[str]) -> list[int]:
        calls.append(len(texts))
        return words(texts)

    # 12,000 words need at least 12,000 / 64 = 188 chunks whatever the packing.
    with pytest.raises(ParseLimitExceeded) as refused:
        Chunker(counter, 64, 8, max_chunks=100).chunk(doc, name="big.txt")
    assert refused.value.code == "too_many_chunks" and refused.value.status == 422
    assert "big.txt" in refused.value.message and "100" in refused.value.message
    assert calls == [2000]  # the sentences were counted, no chunk was packed or recounted
    with pytest.raises(ParseLimitExceeded):  # overlap makes more chunks than the lower bound
        Chunker(words, 64, 8, max_chunks=needed - 1).chunk(doc)


def test_cancelling_an_ingestion_stops_its_chunking_thread() -> None:
    """`asyncio.run` waits for worker threads to end, so every count the thread ever asks for
    is in `counted` when it returns."""
    counting = threading.Event()
    release = threading.Event()
    counted: list[int] = []
    after_cancel: list[int] = []

    def counter(texts: Sequence[str]) -> list[int]:
        (after_cancel if release.is_set() else counted).append(len(texts))
        counting.set()
        release.wait(30)
        return words(texts)

    async def scenario() -> None:
        sandbox = ParseSandbox(ParseSettings())
        try:
            ingestor = Ingestor(None, None, None, Chunker(counter, 64, 8),  # type: ignore[arg-type]
                                max_bytes=64 * 1024 * 1024, parser=sandbox, transactions=None)  # type: ignore[arg-type]
            text = many_sentences(COUNT_BATCH * 5).encode()
            task = asyncio.create_task(ingestor.prepare_async(Upload("big.txt", text)))
            assert await asyncio.to_thread(counting.wait, 60)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            release.set()
        finally:
            await sandbox.close()

    asyncio.run(scenario())
    assert counted == [COUNT_BATCH]
    assert after_cancel == []  # no batch counted, nothing packed once the task was cancelled


def test_a_huge_unpunctuated_line_is_sized_by_its_words_not_tokenized_whole() -> None:
    longest: list[int] = []

    def counter(texts: Sequence[str]) -> list[int]:
        longest.append(max(len(t) for t in texts))
        return words(texts)

    line = "**a _b " * (HUGE_UNIT_CHARS // 2)  # one "sentence" of 70,000 characters
    doc = ParsedDocument(None, "text/markdown", [Section(line, None, None)])
    chunks = Chunker(counter, 64, 8, counts_add_up=True).chunk(doc)
    assert max(longest) < HUGE_UNIT_CHARS
    assert all(c.token_count == len(c.text.split()) <= 64 for c in chunks)
    assert " ".join(c.text for c in chunks).split()[:3] == ["**a", "_b", "**a"]
    with pytest.raises(ParseLimitExceeded):  # 20,000 words need over 300 chunks of 64
        Chunker(counter, 64, 8, max_chunks=300).chunk(doc)
