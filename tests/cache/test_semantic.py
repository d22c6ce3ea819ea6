"""The semantic level on every backend: partitions, the shared list two servers (two indexes)
read, restarts, invalidation, and Redis going away."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from metis_rag.cache import CacheBackend, MemoryBackend, RedisBackend
from metis_rag.cache.equivalence import Equivalence, Model
from metis_rag.cache.mirror import decode_record, encode_record
from metis_rag.cache.semantic import SemanticIndex
from tests.spawn import free_port
from tests.waiting import eventually

DIM = 16
PART = ("ns-a", "1", "7", "shape")


def unit(seed: int, near: np.ndarray | None = None, noise: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=DIM).astype(np.float32)
    if near is not None:
        v = near + noise * v
    return v / np.linalg.norm(v)


def index(log: CacheBackend | None = None, **kw: object) -> SemanticIndex:
    """A lookup waits for its partition's first read, as long as it takes (a loaded test
    machine can be slower than the 5 ms budget); `test_*_warms_*` test the budget."""
    eq = Equivalence(Model.load(), max_error=0.2)
    kw.setdefault("warm_wait_ms", 60_000)
    return SemanticIndex(DIM, max_entries=kw.pop("max_entries", 1000), equivalence=eq,  # type: ignore[arg-type]
                         log=log, ttl_s=60, **kw)  # type: ignore[arg-type]


Q = "How do I rotate the API keys?"
PARA = "How can I rotate the API keys?"


async def test_a_paraphrase_hits_and_explains_why() -> None:
    idx = index()
    v = unit(1)
    await idx.add(PART, v, "key-a", Q)
    found = await idx.match(PART, unit(2, near=v), PARA)
    assert found is not None and found.candidate.key == "key-a"
    assert found.candidate.question == Q and found.candidate.similarity > 0.95
    assert found.verdict.checks[-1] == "score" and found.verdict.score >= idx.equivalence.threshold
    assert (idx.hits, idx.misses) == (1, 0)


async def test_never_crosses_partitions() -> None:
    idx = index()
    v = unit(1)
    await idx.add(PART, v, "key-a", Q)
    for other in [("ns-b", "1", "7", "shape"), ("ns-a", "2", "7", "shape"),
                  ("ns-a", "1", "8", "shape"), ("ns-a", "1", "7", "other")]:
        assert await idx.match(other, v, Q) is None
    await idx.clear("ns-a")
    assert idx.entries == 0 and await idx.match(PART, v, Q) is None


async def test_rejected_candidates_are_counted_by_reason() -> None:
    idx = index()
    v = unit(1)
    await idx.add(PART, v, "key-a", "Who approved the 2024 budget?")
    assert await idx.match(PART, unit(2, near=v), "When was the 2024 budget approved?") is None
    assert await idx.match(PART, unit(3, near=v), "Who approved the 2025 budget?") is None
    assert await idx.match(PART, unit(4), "Who approved the 2024 budget?") is None  # far away
    assert dict(idx.rejected) == {"question_type": 1, "identifiers": 1, "similarity": 1}
    idx.reject("answer_gone", was_hit=True)
    assert idx.stats()["rejected"]["answer_gone"] == 1


async def test_the_best_of_several_candidates_is_served() -> None:
    idx = index()
    v = unit(1)
    # The nearest cached question is a sibling; the paraphrase a little further wins.
    await idx.add(PART, unit(5, near=v, noise=0.01), "sibling", "Who rotates the API keys?")
    await idx.add(PART, unit(6, near=v, noise=0.08), "same", Q)
    found = await idx.match(PART, v, PARA)
    assert found is not None and found.candidate.key == "same"


async def test_bounded_by_evicting_whole_partitions() -> None:
    idx = index(max_entries=50)
    for p in range(10):
        for i in range(10):
            await idx.add(("ns", str(p), "1", "s"), unit(100 * p + i), f"{p}-{i}", f"q {p} {i}")
    assert idx.entries <= 50
    found = await idx.match(("ns", "9", "1", "s"), unit(909), "q 9 9")
    assert found is not None and found.candidate.key == "9-9"


async def test_a_large_partition_switches_to_an_ann_index_and_still_finds_its_questions() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(300, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    idx = index(exact_max=100)
    for i, v in enumerate(vectors):
        await idx.add(PART, v, f"k{i}", f"What does option {i} do?")
    for i in range(0, 300, 37):
        found = await idx.match(PART, vectors[i], f"What does option {i} do?")
        assert found is not None and found.candidate.key == f"k{i}"


def test_records_round_trip() -> None:
    v = unit(1)
    key, question, back = decode_record(encode_record("k:é", "Où est ☕?", v))
    assert (key, question) == ("k:é", "Où est ☕?")
    np.testing.assert_array_equal(back, v)


# -- shared through a backend: every backend -------------------------------------------------


async def test_a_question_answered_on_one_server_is_a_hit_on_another(
    backend: CacheBackend,
) -> None:
    server_a, server_b = index(backend), index(backend)
    v = unit(1)
    await server_a.add(PART, v, "key-a", Q)
    found = await server_b.match(PART, unit(2, near=v), PARA)
    assert found is not None and found.candidate.key == "key-a"
    # B catches up on what A adds later, without reading the whole list again.
    await server_a.add(PART, unit(7), "key-b", "How do I delete a user?")
    found = await server_b.match(PART, unit(7), "How can I delete a user?")
    assert found is not None and found.candidate.key == "key-b"
    assert server_b.entries == (0 if server_b.searched else 2)  # searched: no mirror


async def test_lookups_search_the_backend_where_it_can_and_mirror_elsewhere(
    backend: CacheBackend,
) -> None:
    server_a, server_b = index(backend), index(backend)
    for i in range(40):
        await server_a.add(PART, unit(100 + i), f"key-{i}", f"How do I configure option {i}?")
    found = await server_b.match(PART, unit(2, near=unit(117)), "How can I configure option 17?")
    assert found is not None and found.candidate.key == "key-17"
    assert server_b.searched == backend.searches_lists
    assert server_b.stats()["search"] == ("backend" if backend.searches_lists else "mirror")
    assert server_b.entries == (0 if backend.searches_lists else 40)
    mirrored = index(backend, mirror=True)  # METIS_CACHE__SEMANTIC_SEARCH=mirror
    found = await mirrored.match(PART, unit(2, near=unit(117)), "How can I configure option 17?")
    assert found is not None and found.candidate.key == "key-17"
    assert not mirrored.searched and mirrored.entries == 40


async def test_survives_a_restart(backend: CacheBackend) -> None:
    v = unit(1)
    await index(backend).add(PART, v, "key-a", Q)
    restarted = index(backend)  # a new process: nothing in memory, the backend kept the list
    found = await restarted.match(PART, v, Q)
    assert found is not None and found.candidate.key == "key-a"



async def _seen_by_b_then_cleared(backend: CacheBackend) -> tuple[SemanticIndex, SemanticIndex, np.ndarray]:
    """Two servers on one backend: A adds two questions, B reads them, then A clears."""
    server_a, server_b = index(backend), index(backend)
    v = unit(1)
    await server_a.add(PART, v, "key-a", Q)
    await server_a.add(PART, unit(9), "key-x", "How do I delete a user?")
    assert await server_b.match(PART, v, Q) is not None
    await server_a.clear("ns-a")
    return server_a, server_b, v

async def test_a_clear_on_one_server_empties_the_others(backend: CacheBackend) -> None:
    server_a, server_b, v = await _seen_by_b_then_cleared(backend)
    await server_a.add(PART, unit(8), "key-c", "How do I add a user?")  # shorter than B saw
    assert await server_b.match(PART, v, Q) is None
    found = await server_b.match(PART, unit(8), "How do I add a user?")
    assert found is not None and found.candidate.key == "key-c"
    assert server_b.entries == (0 if server_b.searched else 1)  # searched: no mirror


async def test_a_list_cleared_and_refilled_past_what_a_server_saw_is_read_again(
    backend: CacheBackend,
) -> None:
    """A clear (or a Redis restarted without its data) followed by more appends than B had
    seen, before B reads again: B must not take the new list for the old one grown."""
    server_a, server_b, v = await _seen_by_b_then_cleared(backend)
    await server_a.add(PART, unit(8), "key-c", "How do I add a user?")
    await server_a.add(PART, unit(10), "key-d", "How do I rename a user?")
    await server_a.add(PART, unit(11), "key-e", "How do I disable a user?")
    found = await server_b.match(PART, unit(8), "How do I add a user?")
    assert found is not None and found.candidate.key == "key-c"
    assert await server_b.match(PART, v, Q) is None
    assert server_b.entries == (0 if server_b.searched else 3)  # searched: no mirror


async def test_a_new_collection_version_is_a_new_partition_everywhere(
    backend: CacheBackend,
) -> None:
    server_a, server_b = index(backend), index(backend)
    v = unit(1)
    await server_a.add(PART, v, "key-a", Q)
    assert await server_b.match(PART, v, Q) is not None
    bumped = (*PART[:2], "8", *PART[3:])
    assert await server_a.match(bumped, v, Q) is None
    assert await server_b.match(bumped, v, Q) is None


async def test_redis_down_degrades_to_the_local_index() -> None:
    dead = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.05)
    async with dead:
        idx = index(dead)
        v = unit(1)
        await idx.add(PART, v, "key-a", Q)  # the append fails quietly
        found = await idx.match(PART, unit(2, near=v), PARA)
        assert found is not None and found.candidate.key == "key-a"
        assert dead.errors > 0


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"\x00\x05\x00\x01ab"])
async def test_an_unreadable_record_is_skipped(garbage: bytes) -> None:
    from metis_rag.cache.memory import MemoryBackend

    log = MemoryBackend()
    await log.append(SemanticIndex.log_key(PART), garbage)
    v = unit(1)
    await log.append(SemanticIndex.log_key(PART), encode_record("key-a", Q, v))
    found = await index(log).match(PART, v, Q)
    assert found is not None and found.candidate.key == "key-a"


# -- a server's first read of a long list runs in the background ------------------------------


class GatedLog(MemoryBackend):
    """A real in-memory backend whose whole-list reads (a mirror's first read of a list) wait
    until `gate` is set, as a first read of 10,000 questions takes seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.first_reads = 0

    async def read_list(self, key: str, start: int = 0) -> tuple[int, list[bytes]] | None:
        if start == 0:
            self.first_reads += 1
            await self.gate.wait()
        return await super().read_list(key, start)


async def test_a_lookup_does_not_wait_for_a_first_read_and_later_lookups_hit() -> None:
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(300, DIM)).astype(np.float32)  # past the inline load: a thread
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    log = GatedLog()
    for i, v in enumerate(vectors):
        await log.append(SemanticIndex.log_key(PART), encode_record(f"k{i}", f"What does option "
                                                                    f"{i} do?", v))
    server = index(log, warm_wait_ms=5, exact_max=100)
    for i in (17, 42):  # the read has not returned: each lookup is a miss, not a wait
        found = await asyncio.wait_for(server.match(PART, vectors[i], f"What does option {i} "
                                                    "do?"), timeout=5)
        assert found is None
    assert log.first_reads == 1  # one read in the background, not one per lookup
    assert server.stats()["warming_lookups"] == 2 and server.entries == 0
    await server.add(PART, unit(1), "key-new", Q)  # answered meanwhile: kept beside the read

    log.gate.set()
    await eventually(lambda: server.entries == 301, what="the mirror never warmed")
    for i in (17, 42, 299):
        found = await server.match(PART, vectors[i], f"What does option {i} do?")
        assert found is not None and found.candidate.key == f"k{i}"
    found = await server.match(PART, unit(2, near=unit(1)), PARA)
    assert found is not None and found.candidate.key == "key-new"
    assert server.stats()["warming_lookups"] == 2 and log.first_reads == 1


# -- a bound no threshold meets: the level is off, and says so ------------------------------


class CountingLog(MemoryBackend):
    """A real in-memory backend that counts the list round trips a lookup would make."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def read_list(self, key: str, start: int = 0) -> tuple[int, list[bytes]] | None:
        self.reads += 1
        return await super().read_list(key, start)


@pytest.mark.parametrize("max_error", [0.01, 0.0])
async def test_a_level_that_cannot_serve_skips_its_lookups(max_error: float) -> None:
    log = CountingLog()
    off = SemanticIndex(DIM, max_entries=1000, log=log, ttl_s=60,
                        equivalence=Equivalence(Model.load(), max_error=max_error))
    v = unit(1)
    await off.add(PART, v, "key-a", Q)
    assert await off.match(PART, unit(2, near=v), PARA) is None
    assert log.reads == 0  # no round trip to the shared list
    assert not off.serving
    stats = off.stats()
    assert (stats["serving"], stats["skipped"], stats["misses"]) == (False, 1, 0)
    assert stats["rejected"] == {} and stats["entries"] == 0  # no mirror kept for nothing
    assert "METIS_CACHE__SEMANTIC_MAX_ERROR" in stats["off_reason"]
    # The question still reached the shared list: a server with a looser bound serves it.
    found = await index(log).match(PART, unit(2, near=v), PARA)
    assert found is not None and found.candidate.key == "key-a"
    assert index(log).stats()["off_reason"] is None and index(log).serving


async def test_a_level_that_cannot_serve_and_shares_nothing_keeps_nothing() -> None:
    off = SemanticIndex(DIM, max_entries=1000, equivalence=Equivalence(Model.load(), 0.01))
    await off.add(PART, unit(1), "key-a", Q)
    assert off.entries == 0 and await off.match(PART, unit(1), Q) is None
    assert off.skipped == 1
