"""`TieredCache`: back-fill, corruption handling, failing tiers, prefixes and stats."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from metis_rag.cache import Codec, DiskBackend, MemoryBackend, TieredCache
from tests.fakeclock import FakeClock


@pytest.fixture
def memory(clock: FakeClock) -> MemoryBackend:
    return MemoryBackend(clock=clock)


@pytest.fixture
async def disk(tmp_path: Path, clock: FakeClock) -> AsyncIterator[DiskBackend]:
    async with DiskBackend(tmp_path, clock=clock) as backend:
        yield backend


@pytest.fixture
def cache(memory: MemoryBackend, disk: DiskBackend, clock: FakeClock) -> TieredCache:
    return TieredCache([memory, disk], prefix="t:", clock=clock)


async def test_set_writes_every_tier(
    cache: TieredCache, memory: MemoryBackend, disk: DiskBackend
) -> None:
    await cache.set("q", {"answer": 42})
    assert await memory.get("t:q") is not None
    assert await memory.get("t:q") == await disk.get("t:q")


async def test_hit_in_slower_tier_backfills_faster(
    cache: TieredCache, memory: MemoryBackend
) -> None:
    await cache.set("q", {"answer": 42})
    await memory.clear()
    assert await cache.get("q") == {"answer": 42}
    assert await memory.get("t:q") is not None
    assert await cache.get("q") == {"answer": 42}
    assert cache.stats().hits_by_tier == (1, 1)


async def test_backfill_keeps_the_remaining_ttl(
    cache: TieredCache, memory: MemoryBackend, clock: FakeClock
) -> None:
    await cache.set("q", "v", ttl_s=10)
    clock.step(8)
    await memory.clear()
    assert await cache.get("q") == "v"
    assert await memory.get("t:q") is not None
    clock.step(2.5)  # past the original deadline, not 10 s after the back-fill
    assert await memory.get("t:q") is None
    assert await cache.get("q") is None


async def test_default_ttl_applies(memory: MemoryBackend, clock: FakeClock) -> None:
    cache = TieredCache([memory], default_ttl_s=5, clock=clock)
    await cache.set("a", 1)
    await cache.set("b", 2, ttl_s=50)
    clock.step(6)
    assert await cache.get_many(["a", "b"]) == {"b": 2}


async def test_entry_past_its_stored_expiry_is_a_miss(
    memory: MemoryBackend, clock: FakeClock
) -> None:
    # As if another host with a fast clock wrote it: the backend kept it, the header says no.
    cache = TieredCache([memory], clock=clock)
    await memory.set("k", Codec().encode("stale", expires_at=clock() - 1))
    assert await cache.get("k", default="miss") == "miss"


async def test_corrupt_entry_is_dropped_and_the_next_tier_answers(
    cache: TieredCache, memory: MemoryBackend, disk: DiskBackend
) -> None:
    await cache.set("q", [1, 2, 3])
    good = await disk.get("t:q")
    assert good is not None
    await memory.set("t:q", good[:-1] + bytes([good[-1] ^ 0xFF]))
    assert await cache.get("q") == [1, 2, 3]
    assert await memory.get("t:q") == good  # healed by the back-fill
    stats = cache.stats()
    assert (stats.corrupt_dropped, stats.hits, stats.misses) == (1, 1, 0)


async def test_corrupt_entry_is_never_returned(memory: MemoryBackend) -> None:
    cache = TieredCache([memory])
    await memory.set("k", b"\x01\x00garbage")
    assert await cache.get("k", default="miss") == "miss"
    assert await memory.get("k") is None
    await memory.set("k", b"garbage")
    assert await cache.get_many(["k"]) == {}
    assert await memory.get("k") is None
    stats = cache.stats()
    assert (stats.corrupt_dropped, stats.misses, stats.errors) == (2, 2, 0)


async def test_get_many_reads_each_tier_once_and_backfills(
    cache: TieredCache, memory: MemoryBackend
) -> None:
    await cache.set_many({"a": 1, "b": 2, "c": 3})
    await memory.delete("t:b")
    await memory.delete("t:c")
    assert await cache.get_many(["a", "b", "c", "d", "a"]) == {"a": 1, "b": 2, "c": 3}
    assert await memory.get_many(["t:b", "t:c"]) == await cache.backends[1].get_many(["t:b", "t:c"])
    stats = cache.stats()
    assert (stats.hits_by_tier, stats.misses) == ((1, 2), 1)


async def test_get_many_backfill_never_outlives_an_entry(
    cache: TieredCache, memory: MemoryBackend, clock: FakeClock
) -> None:
    await cache.set("short", 1, ttl_s=5)
    await cache.set("long", 2, ttl_s=100)
    await memory.clear()
    assert await cache.get_many(["short", "long"]) == {"short": 1, "long": 2}
    clock.step(5)
    assert await memory.get("t:short") is None


async def test_arrays_through_disk(cache: TieredCache, memory: MemoryBackend) -> None:
    vectors = np.random.default_rng(0).standard_normal((3, 384)).astype(np.float32)
    await cache.set("emb", vectors)
    await memory.clear()
    np.testing.assert_array_equal(await cache.get("emb"), vectors)


async def test_delete_and_clear_reach_every_tier(
    cache: TieredCache, memory: MemoryBackend, disk: DiskBackend
) -> None:
    await cache.set_many({"doc:1:a": 1, "doc:1:b": 2, "doc:2:a": 3, "x": 4})
    await cache.delete("x")
    await cache.clear("doc:1:")
    for backend in (memory, disk):
        assert set(await backend.get_many(["t:doc:1:a", "t:doc:1:b", "t:doc:2:a", "t:x"])) == {
            "t:doc:2:a"
        }


async def test_prefixes_keep_caches_sharing_backends_apart(memory: MemoryBackend) -> None:
    embeddings = TieredCache([memory], prefix="emb:")
    answers = TieredCache([memory], prefix="llm:")
    await embeddings.set("k", "vector")
    await answers.set("k", "answer")
    await answers.clear()
    assert await embeddings.get("k") == "vector"
    assert await answers.get("k") is None


async def test_failing_tier_is_skipped_and_counted(
    memory: MemoryBackend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = DiskBackend(tmp_path)  # never started: every call raises
    cache = TieredCache([memory, broken])
    with caplog.at_level(logging.DEBUG, logger="metis_rag.cache"):
        await cache.set("k", "v")
        await cache.set_many({"a": 1})
        assert await cache.get("k") == "v"  # served by memory; the broken tier is not asked
        assert await cache.get("absent") is None
        assert await cache.get_many(["k", "absent"]) == {"k": "v"}
        await cache.delete("k")
        await cache.clear()
    assert cache.stats().errors == 6
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the first failure is told, the others are counted


async def test_stats(cache: TieredCache) -> None:
    await cache.set("a", "x" * 100)
    await cache.set_many({"b": 1, "c": 2})
    await cache.get("a")
    await cache.get("b")
    await cache.get("nope")
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.sets) == (2, 1, 3)
    assert stats.hit_ratio == pytest.approx(2 / 3)
    assert stats.mean_hit_ms > 0
    assert stats.mean_miss_ms > 0
    assert stats.bytes_written > 100
    assert stats.to_dict()["hit_ratio"] == pytest.approx(2 / 3)


async def test_invalid_ttl_is_a_caller_error(cache: TieredCache) -> None:
    with pytest.raises(ValueError):
        await cache.set("k", 1, ttl_s=0)


def test_needs_a_backend() -> None:
    with pytest.raises(ValueError):
        TieredCache([])
