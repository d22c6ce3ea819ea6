"""The crafted corpus through the parser sandbox, and the sandbox's own limits: time, memory,
cancellation. Every crafted file is refused with a clear code or parsed within the limits."""

from __future__ import annotations

import asyncio

import psutil
import pytest

from metis_rag.config import ParseSettings
from metis_rag.errors import MetisError, ParseLimitExceeded
from metis_rag.ingest.sandbox import ParseSandbox
from tests.hostile import Crafted, corpus, markdown_emphasis_storm
from tests.parser_processes import cancelled_mid_work, parser_processes
from tests.waiting import eventually

CORPUS = list(corpus(bomb_mb=300))


@pytest.fixture
async def sandbox():
    sb = ParseSandbox(ParseSettings())
    yield sb
    await sb.close()


@pytest.mark.parametrize("crafted", CORPUS, ids=[c.name for c in CORPUS])
async def test_crafted_file_is_refused_clearly_or_parsed(sandbox: ParseSandbox, crafted: Crafted):
    try:
        doc = await sandbox.parse(crafted.data, crafted.name)
    except MetisError as exc:
        assert exc.code in crafted.outcomes, (exc.code, exc.message)
        assert crafted.name in exc.message or exc.code == "parse_memory"
        assert "Traceback" not in exc.message and 400 <= exc.status < 500
        return
    assert "parsed" in crafted.outcomes, f"{crafted.name} was parsed, expected {crafted.outcomes}"
    assert sum(len(s.text) for s in doc.sections) <= sandbox.limits.max_text_chars


async def test_small_files_reuse_one_process(sandbox: ParseSandbox) -> None:
    for i in range(20):
        doc = await sandbox.parse(f"note {i}".encode(), f"n{i}.txt")
        assert doc.sections[0].text == f"note {i}"
    assert sandbox.stats["started"] == 1 and sandbox.stats["parsed"] == 20


async def test_a_parse_past_its_time_is_killed_and_the_next_file_gets_a_fresh_process() -> None:
    sb = ParseSandbox(ParseSettings(timeout_s=0.2))
    try:
        await sb.parse(b"warm up", "w.txt")
        before = parser_processes()
        with pytest.raises(ParseLimitExceeded) as caught:
            await sb.parse(markdown_emphasis_storm(mb=4), "storm.md")
        assert caught.value.code == "parse_timeout" and "storm.md" in caught.value.message
        await eventually(lambda: not (before & parser_processes()),
                         what="the timed-out parser process is still alive")
        assert (await sb.parse(b"still works", "after.txt")).sections[0].text == "still works"
        assert sb.stats["timeouts"] == 1 and sb.stats["started"] == 2
    finally:
        await sb.close()


async def test_a_file_that_needs_more_memory_than_the_ceiling_is_refused() -> None:
    sb = ParseSandbox(ParseSettings(memory_limit_mb=200, max_text_chars=100_000_000))
    try:
        # ~4 bytes per character once decoded (one emoji makes the whole string UCS-4), times
        # the copies normalisation makes: far past 200 MB of address space.
        data = "\U0001f600 word ".encode() * 6_000_000
        with pytest.raises(ParseLimitExceeded) as caught:
            await sb.parse(data, "huge.txt")
        assert caught.value.code == "parse_memory"
        assert (await sb.parse(b"small", "s.txt")).sections[0].text == "small"
    finally:
        await sb.close()


async def test_cancelling_a_parse_kills_its_process_past_the_grace() -> None:
    # A grace well under the storm's parse (0.4-0.8 s), whatever the machine's speed.
    sb = ParseSandbox(ParseSettings(cancel_grace_s=0.05))
    try:
        await sb.parse(b"warm up", "w.txt")
        await cancelled_mid_work(sb.parse(markdown_emphasis_storm(mb=4), "storm.md"))
        assert sb.stats["abandoned"] == 1 and sb.stats["abandoned_finished"] == 0, sb.stats
    finally:
        await sb.close()


async def test_close_stops_every_parser_process() -> None:
    sb = ParseSandbox(ParseSettings(workers=2))
    await asyncio.gather(sb.parse(b"a", "a.txt"), sb.parse(b"b", "b.txt"))
    started = parser_processes()
    assert len(started) >= 2, (sb.stats, len(sb._idle))
    await sb.close()
    alive = [pid for pid in started if psutil.pid_exists(pid)
             and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not alive, alive


def test_the_text_limit_follows_the_chunk_limit_unless_set() -> None:
    from metis_rag.config import Settings

    assert Settings().parse.max_text_chars == 5000 * 128 * 8
    smaller = Settings(chunk={"max_chunks_per_document": 100, "max_tokens": 64})
    assert smaller.parse.max_text_chars == 100 * 64 * 8
    assert ParseSandbox(smaller.parse).limits.max_text_chars == 51_200
    assert Settings(parse={"max_text_chars": 2000}).parse.max_text_chars == 2000
