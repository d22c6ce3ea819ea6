"""Chunking in the parser processes: the same chunks as the server's `Chunker`, the same limits
and refusals, killed when its ingestion is cancelled, at a lower CPU priority than the server,
and the server's own chunker left unused."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence

import psutil
import pytest

from metis_rag.config import ParseSettings
from metis_rag.embed.packaged import count_tokens, tokenizer_file
from metis_rag.errors import ParseLimitExceeded
from metis_rag.ingest.chunker import Chunker
from metis_rag.ingest.parsers import ParsedDocument, Section
from metis_rag.ingest.pipeline import Ingestor, Upload
from metis_rag.ingest.sandbox import ChunkingConfig, ParseSandbox
from tests.files import MAKERS
from tests.hostile import markdown_emphasis_storm
from tests.parser_processes import cancelled_mid_work, parser_processes, until_working
from tests.waiting import eventually

CHUNKING = ChunkingConfig(tokenizer_file(), max_tokens=64, overlap_tokens=8, max_chunks=5000)


def server_chunker() -> Chunker:
    return Chunker(count_tokens, CHUNKING.max_tokens, CHUNKING.overlap_tokens,
                   max_chunks=CHUNKING.max_chunks)


@pytest.fixture
async def sandbox() -> AsyncIterator[ParseSandbox]:
    sb = ParseSandbox(ParseSettings(), CHUNKING)
    yield sb
    await sb.close()


@pytest.mark.parametrize("name", sorted(MAKERS))
async def test_the_parser_process_chunks_exactly_as_the_server_would(
    sandbox: ParseSandbox, name: str
) -> None:
    parsed = await sandbox.parse(MAKERS[name](), name)
    assert await sandbox.chunk(parsed, name) == server_chunker().chunk(parsed, None, name)


async def test_sections_pages_and_long_sentences_survive_the_round_trip(
    sandbox: ParseSandbox,
) -> None:
    parsed = ParsedDocument(title="T", mime="text/plain", sections=[
        Section(text="First page. " * 200, page=1, heading="Intro"),
        Section(text="no stop at all " * 3000, page=2, heading=None),  # cut by words
        Section(text="Ünïcödé — “quotes” and 漢字。" * 50, page=None, heading="Zeichen"),
    ])
    chunks = await sandbox.chunk(parsed, "doc.txt")
    assert chunks == server_chunker().chunk(parsed, None, "doc.txt")
    assert {(c.page, c.section) for c in chunks} == {(1, "Intro"), (2, None), (None, "Zeichen")}
    assert [c.position for c in chunks] == list(range(len(chunks)))


async def test_too_many_chunks_is_refused_by_the_process_with_its_code(
    sandbox: ParseSandbox,
) -> None:
    storm = await sandbox.parse(markdown_emphasis_storm(), "storm.md")
    with pytest.raises(ParseLimitExceeded) as caught:
        await sandbox.chunk(storm, "storm.md")
    assert caught.value.code == "too_many_chunks" and "storm.md" in caught.value.message
    ok = await sandbox.parse(b"Still chunks. After that.", "after.txt")
    assert [c.text for c in await sandbox.chunk(ok, "after.txt")] == ["Still chunks. After that."]
    assert sandbox.stats["chunked"] == 1 and sandbox.stats["refused"] == 1, sandbox.stats


async def test_cancelling_a_chunking_kills_its_process(sandbox: ParseSandbox) -> None:
    parsed = ParsedDocument(title="", mime="text/plain",
                            sections=[Section("A sentence here. " * 300_000, None, None)])
    await sandbox.chunk(ParsedDocument("", "text/plain", [Section("warm up.", None, None)]), "w.txt")
    await cancelled_mid_work(sandbox.chunk(parsed, "big.txt"))
    assert sandbox.stats["abandoned"] == 1, sandbox.stats
    # Its replacement starts at once, in the background: the next file finds it ready.
    await eventually(lambda: bool(sandbox._idle), within_s=30, what="no replacement started")
    assert len(sandbox._idle) == 1 and sandbox.stats["started"] == 2, sandbox.stats
    await sandbox.parse(b"next", "next.txt")
    assert sandbox.stats["started"] == 2, sandbox.stats


async def test_work_abandoned_within_the_grace_keeps_its_process() -> None:
    # One process, and a grace far past the chunking (under a second): the cancelled work
    # finishes, its result is dropped, and the same process takes the next file; none starts.
    sb = ParseSandbox(ParseSettings(workers=1, cancel_grace_s=30), CHUNKING)
    try:
        await sb.parse(b"warm up", "w.txt")
        before = parser_processes()
        parsed = ParsedDocument("", "text/plain", [Section("A sentence here. " * 30_000, None, None)])
        task = asyncio.create_task(sb.chunk(parsed, "big.txt"))
        await until_working(before)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [c.text for c in await sb.chunk(ParsedDocument("", "text/plain", [
            Section("Next file.", None, None)]), "next.txt")] == ["Next file."]
        assert sb.stats["abandoned"] == 1 and sb.stats["abandoned_finished"] == 1, sb.stats
        assert sb.stats["started"] == 1 and parser_processes() == before, sb.stats
    finally:
        await sb.close()


async def test_parser_processes_run_below_the_server_priority() -> None:
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    for nice in (0, 7):
        sb = ParseSandbox(ParseSettings(nice=nice), CHUNKING)
        try:
            await sb.parse(b"x", "x.txt")
            (worker,) = sb._idle
            assert psutil.Process(worker.proc.pid).nice() == min(19, mine + nice)
        finally:
            await sb.close()


async def test_prepare_chunks_in_the_parser_process_not_in_the_server(
    sandbox: ParseSandbox,
) -> None:
    def must_not_count(texts: Sequence[str]) -> list[int]:
        raise AssertionError("the server's chunker ran")

    ingestor = Ingestor(None, None, None, Chunker(must_not_count, 64, 8),  # type: ignore[arg-type]
                        max_bytes=1 << 20, parser=sandbox, transactions=None)  # type: ignore[arg-type]
    text = b"One sentence. Another one follows it.\n\nA second paragraph."
    prepared = await ingestor.prepare_async(Upload("note.txt", text))
    parsed = await sandbox.parse(text, "note.txt")
    assert prepared.chunks == server_chunker().chunk(parsed, None, "note.txt")
    assert prepared.filename == "note.txt" and prepared.mime == "text/plain"
