"""The behaviour every `CacheBackend` promises, run on memory, disk, Redis and PostgreSQL (with
and without pgvector) alike."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from metis_rag.cache import CacheBackend

PassTime = Callable[[float], Awaitable[None]]

# Redis expires keys on its own clock, for real: a short TTL raced a loaded CI machine
# (set_many then get_many found the keys already gone at 0.2 s). The fake clock does not care.
TTL_S = 1.5


async def test_missing_key_is_none(backend: CacheBackend) -> None:
    assert await backend.get("absent") is None


async def test_set_get_overwrite_delete(backend: CacheBackend) -> None:
    await backend.set("k", b"one")
    assert await backend.get("k") == b"one"
    await backend.set("k", b"two, longer")
    assert await backend.get("k") == b"two, longer"
    await backend.delete("k")
    assert await backend.get("k") is None
    await backend.delete("k")  # deleting what is gone is fine


async def test_binary_and_empty_values(backend: CacheBackend) -> None:
    every_byte = bytes(range(256)) * 4
    await backend.set("bin", every_byte)
    await backend.set("empty", b"")
    assert await backend.get("bin") == every_byte
    assert await backend.get("empty") == b""


async def test_large_value(backend: CacheBackend) -> None:
    big = os.urandom(4 * 1024 * 1024)
    await backend.set("big", big)
    assert await backend.get("big") == big


async def test_unicode_keys_are_distinct(backend: CacheBackend) -> None:
    await backend.set("café ☕", b"1")
    await backend.set("cafe", b"2")
    assert await backend.get("café ☕") == b"1"
    assert await backend.get("cafe") == b"2"


async def test_ttl_expires(backend: CacheBackend, pass_time: PassTime) -> None:
    await backend.set("short", b"x", ttl_s=TTL_S)
    await backend.set("forever", b"y")
    assert await backend.get("short") == b"x"
    await pass_time(TTL_S + 0.3)
    assert await backend.get("short") is None
    assert await backend.get_many(["short", "forever"]) == {"forever": b"y"}


async def test_overwrite_without_ttl_clears_the_ttl(
    backend: CacheBackend, pass_time: PassTime
) -> None:
    await backend.set("k", b"old", ttl_s=TTL_S)
    await backend.set("k", b"new")
    await pass_time(TTL_S + 0.3)
    assert await backend.get("k") == b"new"


@pytest.mark.parametrize("ttl_s", [0, -1.0])
async def test_ttl_must_be_positive(backend: CacheBackend, ttl_s: float) -> None:
    with pytest.raises(ValueError):
        await backend.set("k", b"v", ttl_s=ttl_s)
    with pytest.raises(ValueError):
        await backend.set_many({"k": b"v"}, ttl_s=ttl_s)


async def test_get_many_returns_only_found_keys(backend: CacheBackend) -> None:
    await backend.set_many({f"k{i}": f"v{i}".encode() for i in range(40)})
    got = await backend.get_many(["k0", "nope", "k39", "k0", "k7"])
    assert got == {"k0": b"v0", "k39": b"v39", "k7": b"v7"}
    assert await backend.get_many([]) == {}


async def test_set_many_with_ttl(backend: CacheBackend, pass_time: PassTime) -> None:
    await backend.set_many({"a": b"1", "b": b"2"}, ttl_s=TTL_S)
    assert await backend.get_many(["a", "b"]) == {"a": b"1", "b": b"2"}
    await pass_time(TTL_S + 0.3)
    assert await backend.get_many(["a", "b"]) == {}


async def test_clear_by_prefix(backend: CacheBackend) -> None:
    await backend.set_many({"emb:1": b"a", "emb:2": b"b", "llm:1": b"c", "em": b"d"})
    assert await backend.clear("emb:") == 2
    assert await backend.get_many(["emb:1", "emb:2", "llm:1", "em"]) == {"llm:1": b"c", "em": b"d"}


async def test_clear_prefix_is_literal(backend: CacheBackend) -> None:
    # Glob and LIKE metacharacters in a prefix match only themselves.
    await backend.set_many({"q*[1]?%_x": b"a", "q*[1]?%_y": b"b", "qA1Z": b"c", "q_x": b"d"})
    await backend.clear("q*[1]?%_")
    assert await backend.get_many(["q*[1]?%_x", "q*[1]?%_y", "qA1Z", "q_x"]) == {
        "qA1Z": b"c",
        "q_x": b"d",
    }


async def test_clear_with_non_ascii_prefix(backend: CacheBackend) -> None:
    await backend.set_many({"é1": b"a", "é2": b"b", "ê1": b"c", "e1": b"d"})
    await backend.clear("é")
    assert await backend.get_many(["é1", "é2", "ê1", "e1"]) == {"ê1": b"c", "e1": b"d"}


async def test_clear_everything(backend: CacheBackend) -> None:
    await backend.set_many({"a": b"1", "b": b"2", "c:d": b"3"})
    assert await backend.clear() == 3
    assert await backend.get_many(["a", "b", "c:d"]) == {}


async def test_stats_track_entries_and_bytes(backend: CacheBackend) -> None:
    await backend.set("a", b"12345")
    await backend.set("b", b"123")
    await backend.set("a", b"1")
    stats = await backend.stats()
    assert stats.entries in (2, None)
    assert stats.bytes in (4, None)
    assert stats.errors == 0
    assert stats.healthy


async def test_usage_counts_the_keys_of_one_prefix(backend: CacheBackend) -> None:
    await backend.set_many({"exact:a": b"12345", "exact:b": b"123", "llm:a": b"1234567"})
    usage = await backend.usage("exact:")
    assert usage in ((2, 8), None)  # None: the backend cannot tell cheaply (Redis)
    if usage is not None:
        assert await backend.usage("llm:") == (1, 7)
        assert await backend.usage("nothing:") == (0, 0)


# -- append-only lists (the semantic level's shared log) -------------------------------------


async def test_list_append_and_read_from_an_index(backend: CacheBackend) -> None:
    lists = backend
    assert await lists.read_list("log") == (0, [])
    for i in range(5):
        await lists.append("log", f"item{i}".encode(), ttl_s=60)
    assert await lists.read_list("log") == (5, [f"item{i}".encode() for i in range(5)])
    assert await lists.read_list("log", 3) == (5, [b"item3", b"item4"])
    assert await lists.read_list("log", 5) == (5, [])
    assert await lists.read_list("other") == (0, [])


async def test_list_keeps_binary_items(backend: CacheBackend) -> None:
    items = [bytes(range(256)), b"", b"\x00\x00\x00\x04abcd"]
    for item in items:
        await backend.append("bin", item)
    assert await backend.read_list("bin") == (3, items)


async def test_list_ttl_is_renewed_by_append_and_expires(
    backend: CacheBackend, pass_time: PassTime
) -> None:
    lists = backend
    await lists.append("log", b"a", ttl_s=2 * TTL_S)
    await pass_time(1.2 * TTL_S)
    await lists.append("log", b"b", ttl_s=2 * TTL_S)
    await pass_time(1.2 * TTL_S)
    assert await lists.read_list("log") == (2, [b"a", b"b"])
    await pass_time(TTL_S + 0.3)
    assert await lists.read_list("log") == (0, [])
    await lists.append("log", b"c", ttl_s=2 * TTL_S)  # a new list, counted from zero
    assert await lists.read_list("log") == (1, [b"c"])


async def test_lists_are_removed_by_clear_of_their_prefix(backend: CacheBackend) -> None:
    lists = backend
    await lists.append("semantic:ns1:a", b"1")
    await lists.append("semantic:ns1_x:a", b"_ is no wildcard")
    await lists.append("semantic:ns2:a", b"2")
    assert await lists.clear("semantic:ns1:") != 0
    assert await lists.read_list("semantic:ns1:a") == (0, [])
    assert await lists.read_list("semantic:ns1_x:a") == (1, [b"_ is no wildcard"])
    await lists.append("semantic:ns1:a", b"again")  # a new list after a clear
    assert await lists.read_list("semantic:ns1:a") == (1, [b"again"])
    await lists.clear()
    assert await lists.read_list("semantic:ns2:a") == (0, [])


async def test_concurrent_appends_all_land(backend: CacheBackend) -> None:
    # Several servers append to one list at once: every item, each at its own position.
    await asyncio.gather(*(backend.append("log", f"{i}".encode(), ttl_s=60)
                           for i in range(20)))
    found = await backend.read_list("log")
    assert found is not None
    length, items = found
    assert length == 20 and sorted(int(v) for v in items) == list(range(20))


async def test_list_is_removed_by_delete_and_clear(backend: CacheBackend) -> None:
    await backend.append("semantic:ns1:a", b"1")
    await backend.append("semantic:ns2:a", b"2")
    await backend.append("gone", b"3")
    await backend.set("semantic:ns1:entry", b"e")
    await backend.delete("gone")
    assert await backend.read_list("gone") == (0, [])
    assert await backend.clear("semantic:ns1:") != 0
    assert await backend.read_list("semantic:ns1:a") == (0, [])
    assert await backend.get("semantic:ns1:entry") is None
    assert await backend.read_list("semantic:ns2:a") == (1, [b"2"])
    await backend.clear()
    assert await backend.read_list("semantic:ns2:a") == (0, [])


async def test_list_ttl_must_be_positive(backend: CacheBackend) -> None:
    with pytest.raises(ValueError):
        await backend.append("log", b"v", ttl_s=0)


# -- searching a list (backends that `searches_lists`; the others leave it to the reader) ----


def _unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


async def test_a_list_is_searched_by_its_vectors_or_not_at_all(backend: CacheBackend) -> None:
    vectors = {b"east": _unit(1, 0, 0), b"north-east": _unit(1, 1, 0), b"north": _unit(0, 1, 0),
               b"up": _unit(0, 0, 1)}
    for item, vector in vectors.items():
        await backend.append("log", item, ttl_s=60, vector=vector)
    await backend.append("log", b"no vector", ttl_s=60)
    await backend.append("log", b"other dimension", ttl_s=60, vector=_unit(1, 0, 0, 0))
    # Vectors never change what a list holds.
    assert await backend.read_list("log") == (6, [*vectors, b"no vector", b"other dimension"])
    found = await backend.search_list("log", _unit(1, 0.2, 0), 2)
    if not backend.searches_lists:
        assert found is None
        return
    assert found == [b"east", b"north-east"]
    assert await backend.search_list("log", _unit(0, 0.1, 1), 10) == [
        b"up", b"north", b"north-east", b"east"]
    assert await backend.search_list("missing", _unit(1, 0, 0), 2) == []


async def test_a_searched_list_ends_with_its_ttl_and_its_clear(
    backend: CacheBackend, pass_time: PassTime
) -> None:
    if not backend.searches_lists:
        assert await backend.search_list("semantic:ns:a", _unit(1, 0), 1) is None
        return
    await backend.append("semantic:ns:a", b"old", ttl_s=TTL_S, vector=_unit(1, 0))
    await pass_time(TTL_S + 0.3)
    assert await backend.search_list("semantic:ns:a", _unit(1, 0), 1) == []
    await backend.append("semantic:ns:a", b"new", ttl_s=60, vector=_unit(0, 1))
    assert await backend.search_list("semantic:ns:a", _unit(1, 0), 5) == [b"new"]
    await backend.clear("semantic:ns:")
    assert await backend.search_list("semantic:ns:a", _unit(1, 0), 5) == []
