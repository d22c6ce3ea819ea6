"""`DiskBackend` specifics: persistence across restarts, eviction, several processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from metis_rag.cache import DiskBackend
from tests.fakeclock import FakeClock


async def test_survives_close_and_reopen(tmp_path: Path, clock: FakeClock) -> None:
    async with DiskBackend(tmp_path, clock=clock) as cache:
        await cache.set("kept", b"v1")
        await cache.set("short", b"v2", ttl_s=60)
    async with DiskBackend(tmp_path, clock=clock) as cache:
        assert await cache.get_many(["kept", "short"]) == {"kept": b"v1", "short": b"v2"}
        assert (await cache.stats()).entries == 2
    clock.step(61)  # expiry is wall-clock time, so it still holds after a restart
    async with DiskBackend(tmp_path, clock=clock) as cache:
        assert await cache.get_many(["kept", "short"]) == {"kept": b"v1"}


async def test_evicts_least_recently_used_by_entries(tmp_path: Path, clock: FakeClock) -> None:
    async with DiskBackend(tmp_path, max_entries=3, clock=clock) as cache:
        for key in "abc":
            await cache.set(key, key.encode())
            clock.step(2)
        assert await cache.get("a") == b"a"  # a is recent again, b is now the oldest
        clock.step(2)
        await cache.set("d", b"d")
        assert await cache.get_many(list("abcd")) == {"a": b"a", "c": b"c", "d": b"d"}
        stats = await cache.stats()
        assert (stats.entries, stats.evictions) == (3, 1)


async def test_evicts_by_bytes_and_prefers_expired(tmp_path: Path, clock: FakeClock) -> None:
    async with DiskBackend(tmp_path, max_bytes=1000, clock=clock) as cache:
        await cache.set("old", bytes(300))
        clock.step(1)
        await cache.set("expiring", bytes(300), ttl_s=5)
        clock.step(10)
        await cache.set("new", bytes(300))
        await cache.set("newer", bytes(300))  # 1200 bytes: the expired entry goes first
        stats = await cache.stats()
        assert (stats.entries, stats.bytes, stats.evictions) == (3, 900, 0)
        clock.step(1)
        await cache.set("newest", bytes(300))  # now the least recently used goes
        assert set(await cache.get_many(["old", "new", "newer", "newest"])) == {
            "new",
            "newer",
            "newest",
        }
        stats = await cache.stats()
        assert stats.bytes == 900
        assert stats.evictions == 1


async def test_value_larger_than_the_bound_is_not_stored(tmp_path: Path) -> None:
    async with DiskBackend(tmp_path, max_bytes=100) as cache:
        await cache.set("k", b"small")
        await cache.set("k", bytes(101))
        assert await cache.get("k") is None
        assert (await cache.stats()).bytes == 0


_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from metis_rag.cache import DiskBackend

    async def main(directory, name):
        async with DiskBackend(directory) as cache:
            for i in range(200):
                await cache.set(f"{name}:{i}", name.encode() * 100)
                if i % 20 == 0:
                    await cache.set_many({f"{name}:batch{i}:{j}": b"b" for j in range(20)})

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def test_several_processes_write_the_same_cache(tmp_path: Path) -> None:
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), name])
        for name in ("p1", "p2", "p3")
    ]
    async with DiskBackend(tmp_path) as cache:
        while any(w.poll() is None for w in writers):
            await cache.get_many([f"p1:{i}" for i in range(0, 200, 7)])  # reads go on meanwhile
            await asyncio.sleep(0.01)
        assert [w.returncode for w in writers] == [0, 0, 0]
        for name in ("p1", "p2", "p3"):
            found = await cache.get_many([f"{name}:{i}" for i in range(200)])
            assert len(found) == 200
            assert set(found.values()) == {name.encode() * 100}
        stats = await cache.stats()
        assert stats.entries == 3 * (200 + 10 * 20)  # the trigger-kept totals stayed exact
        assert stats.bytes == 3 * (200 * 200 + 10 * 20)


async def test_backend_must_be_started(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="start"):
        await DiskBackend(tmp_path).get("k")
