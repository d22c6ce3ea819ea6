"""`MemoryBackend` specifics: LRU order, both bounds, eviction count."""

from __future__ import annotations

from metis_rag.cache import MemoryBackend
from tests.fakeclock import FakeClock


async def test_least_recently_used_goes_first() -> None:
    cache = MemoryBackend(max_entries=3)
    await cache.set_many({"a": b"1", "b": b"2", "c": b"3"})
    assert await cache.get("a") == b"1"  # now b is the least recently used
    await cache.set("d", b"4")
    assert await cache.get_many(["a", "b", "c", "d"]) == {"a": b"1", "c": b"3", "d": b"4"}


async def test_get_many_and_overwrite_refresh_recency() -> None:
    cache = MemoryBackend(max_entries=3)
    await cache.set_many({"a": b"1", "b": b"2", "c": b"3"})
    await cache.get_many(["a"])
    await cache.set("b", b"22")
    await cache.set("d", b"4")  # c is the oldest now
    assert await cache.get("c") is None
    assert await cache.get_many(["a", "b", "d"]) == {"a": b"1", "b": b"22", "d": b"4"}


async def test_bounded_by_entries() -> None:
    cache = MemoryBackend(max_entries=10)
    for i in range(25):
        await cache.set(f"k{i}", b"x")
    stats = await cache.stats()
    assert stats.entries == 10
    assert stats.evictions == 15
    assert await cache.get("k14") is None
    assert await cache.get("k15") == b"x"


async def test_bounded_by_bytes() -> None:
    cache = MemoryBackend(max_entries=1000, max_bytes=1000)
    for i in range(10):
        await cache.set(f"k{i}", bytes(300))
    stats = await cache.stats()
    assert stats.bytes == 900
    assert stats.entries == 3
    assert stats.evictions == 7
    assert set(await cache.get_many([f"k{i}" for i in range(10)])) == {"k7", "k8", "k9"}


async def test_overwrite_keeps_byte_count_exact() -> None:
    cache = MemoryBackend(max_bytes=100)
    await cache.set("a", bytes(60))
    await cache.set("a", bytes(10))
    await cache.set("b", bytes(80))
    assert await cache.get("a") == bytes(10)  # 90 bytes fit, nothing was evicted
    assert (await cache.stats()).evictions == 0


async def test_value_larger_than_the_bound_is_not_stored() -> None:
    cache = MemoryBackend(max_bytes=100)
    await cache.set("small", b"s")
    await cache.set("huge", bytes(101))
    assert await cache.get("huge") is None
    assert await cache.get("small") == b"s"
    await cache.set("small", bytes(101))  # an oversized overwrite drops the old value
    assert await cache.get("small") is None


async def test_expiry_follows_the_injected_clock(clock: FakeClock) -> None:
    cache = MemoryBackend(clock=clock)
    await cache.set("k", b"v", ttl_s=10)
    clock.step(9.9)
    assert await cache.get("k") == b"v"
    clock.step(0.1)
    assert await cache.get("k") is None
    assert (await cache.stats()).entries == 0
