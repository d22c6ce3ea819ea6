"""The cache levels' own logic: embedding cache, keys, identifiers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from metis_rag.cache.levels import digest, entities, normalize_question, open_caches
from metis_rag.cache.memory import MemoryBackend
from metis_rag.cache.tiered import TieredCache
from metis_rag.config import CacheSettings, Settings
from metis_rag.embed.cached import CachedEmbedder


class CountingEmbedder:
    """A real (if simple) Embedder: hashed character trigrams, counting what it embeds."""

    model_id = "test:trigram"
    dim = 64

    def __init__(self) -> None:
        self.embedded: list[str] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.embedded.extend(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for j in range(len(t) - 2):
                out[i, hash(t[j : j + 3]) % self.dim] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


async def test_unchanged_texts_are_never_embedded_twice() -> None:
    inner = CountingEmbedder()
    backend = MemoryBackend()
    embedder = CachedEmbedder(inner, TieredCache([backend], prefix="embedding:"))
    first = await embedder.embed(["alpha one", "beta two", "alpha one"])
    assert inner.embedded == ["alpha one", "beta two"]
    again = await embedder.embed(["beta two", "gamma three", "alpha one"])
    assert inner.embedded == ["alpha one", "beta two", "gamma three"]
    np.testing.assert_allclose(again[2], first[0])
    np.testing.assert_allclose(again[0], first[1])
    assert (await embedder.embed([])).shape == (0, 64)


class SlowSharedTier(MemoryBackend):
    """A shared tier whose reads take a real round trip (they yield to the event loop) and
    whose writes can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_writes = False

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        await asyncio.sleep(0.001)
        return await super().get_many(keys)

    async def set_many(self, items: Mapping[str, bytes], ttl_s: float | None = None) -> None:
        if self.fail_writes:
            raise ConnectionError("the shared tier is down")
        await super().set_many(items, ttl_s)


async def test_a_question_found_in_memory_never_starts_the_model() -> None:
    inner = CountingEmbedder()
    memory = MemoryBackend()
    embedder = CachedEmbedder(inner, TieredCache([memory, SlowSharedTier()], prefix="e:"))
    first = await embedder.embed(["how do I rotate keys"])
    await embedder.flush()  # waits for the write behind
    again = await embedder.embed(["how do I rotate keys"])
    await asyncio.sleep(0.01)  # a model task cancelled after starting would have run by now
    assert inner.embedded == ["how do I rotate keys"]
    assert again.shape == (1, 64)
    np.testing.assert_allclose(again, first)


async def test_a_questions_vector_is_written_behind_to_every_tier() -> None:
    inner = CountingEmbedder()
    memory, shared = MemoryBackend(), SlowSharedTier()
    embedder = CachedEmbedder(inner, TieredCache([memory, shared], prefix="e:"))
    vector = await embedder.embed(["what is a quota"])
    await embedder.flush()
    key = "e:" + embedder._key("what is a quota")
    assert key in await memory.get_many([key]) and key in await shared.get_many([key])
    # Another server (its own memory tier) finds it in the shared tier: the same vector.
    other = CachedEmbedder(CountingEmbedder(), TieredCache([MemoryBackend(), shared],
                                                           prefix="e:"))
    np.testing.assert_allclose(await other.embed(["what is a quota"]), vector)
    await other.close()


async def test_a_failed_write_behind_costs_only_a_later_run() -> None:
    inner = CountingEmbedder()
    shared = SlowSharedTier()
    shared.fail_writes = True
    embedder = CachedEmbedder(inner, TieredCache([shared], prefix="e:"))
    vector = await embedder.embed(["what is a quota"])
    await embedder.close()
    assert vector.shape == (1, 64)
    shared.fail_writes = False
    await embedder.embed(["what is a quota"])
    assert inner.embedded == ["what is a quota"] * 2


def test_keys_normalize_questions_and_separate_parts() -> None:
    assert normalize_question("  How do I   Rotate keys?? ") == "how do i rotate keys"
    assert digest("a", "bc") != digest("ab", "c")


def test_entities_are_the_identifiers_and_figures_a_question_names() -> None:
    assert entities("What does queue.Queue.get do?") == {"queue.queue.get"}
    assert entities("What does Queue.get_nowait do?") == {"queue.get_nowait"}
    assert entities("What does SEV1 mean, and `os.path`?") == {"1", "os.path"}
    assert entities("release 2.3") != entities("release 3.2")
    assert entities("GPLv3") == entities("GPL-3") == entities("gpl 3") == {"3"}
    assert entities("umask 0022") == entities("umask 022")
    assert entities("What does $? mean?") != entities("What does $$ mean?")
    assert entities("git reset --soft") == {"--soft"} != entities("git reset --hard")
    assert entities("How much paid holiday do I get each year?") == frozenset()


def test_the_postgres_cache_backend_is_refused_without_a_postgresql_database(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValidationError, match="needs a PostgreSQL METIS_DATABASE_URL"):
        Settings(data_dir=tmp_path, cache=CacheSettings(backend="postgres"))
    ok = Settings(data_dir=tmp_path, cache=CacheSettings(backend="postgres"),
                  database_url="postgresql+asyncpg://metis@127.0.0.1/metis")
    assert ok.cache.backend == "postgres"


@pytest.mark.parametrize(("max_error", "level", "says"), [
    (0.01, "WARNING", "no calibrated threshold meets METIS_CACHE__SEMANTIC_MAX_ERROR=0.01"),
    (0.0, "INFO", "METIS_CACHE__SEMANTIC_MAX_ERROR=0 switches the semantic level off"),
    (0.2, None, None),
])
async def test_a_level_that_cannot_serve_says_so_once_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, max_error: float, level: str | None,
    says: str | None,
) -> None:
    settings = CacheSettings(backend="memory", semantic_max_error=max_error)
    with caplog.at_level(logging.INFO, logger="metis_rag.cache.levels"):
        async with AsyncExitStack() as stack:
            caches = await open_caches(settings, tmp_path, 16, stack)
            for _ in range(3):
                await caches.semantic.match(("ns", "1", "1", "s"), np.ones(16, np.float32), "q?")
    lines = [r for r in caplog.records if r.name == "metis_rag.cache.levels"]
    if says is None:
        assert lines == [] and caches.semantic.serving
        return
    assert len(lines) == 1 and lines[0].levelname == level and says in lines[0].getMessage()
    assert caches.semantic.stats()["skipped"] == 3


async def test_a_parse_read_again_is_not_decoded_again(tmp_path: Path) -> None:
    # The upload's parse is read by its task, and a file sent again by its upload: a big text
    # decoded each time held the event loop 8-30 ms.
    async with AsyncExitStack() as stack:
        caches = await open_caches(CacheSettings(backend="memory"), tmp_path, 16, stack)
        await caches.document.set("h:a.txt", {"sections": [["x" * 100_000, None, None]]})
        first = await caches.document.get("h:a.txt")
        assert await caches.document.get("h:a.txt") is first
        await caches.document.set("h:a.txt", {"sections": [["changed", None, None]]})
        assert await caches.document.get("h:a.txt") == {"sections": [["changed", None, None]]}
