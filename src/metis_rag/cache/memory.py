"""In-process LRU cache bounded by entry count and by value bytes, with per-entry TTL."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from .base import BackendStats, CacheBackend, check_ttl

if TYPE_CHECKING:
    import numpy as np


class MemoryBackend(CacheBackend):
    """Least-recently-used eviction once `max_entries` or `max_bytes` (sum of value sizes) is hit.

    `clock` returns monotonic seconds; tests pass a fake one to expire entries without sleeping.
    A value larger than `max_bytes` is not stored. Expired entries are dropped when read or
    when eviction reaches them, so `entries` may count a few that have already expired.
    Lists (`append`) have a budget of their own, `max_bytes` too: beyond it the least recently
    appended lists are dropped whole.
    """

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        # key -> (value, expires_at or None); order is least recently used first.
        self._data: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._bytes = 0
        self._evictions = 0
        # key -> (items, expires_at or None); order is least recently appended first.
        self._lists: OrderedDict[str, tuple[list[bytes], float | None]] = OrderedDict()
        self._list_bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, key: str) -> bytes | None:
        return self._get(key, self._clock())

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        now = self._clock()
        found = {}
        for key in keys:
            value = self._get(key, now)
            if value is not None:
                found[key] = value
        return found

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        check_ttl(ttl_s)
        self._set(key, value, None if ttl_s is None else self._clock() + ttl_s)
        self._evict()

    async def set_many(self, items: Mapping[str, bytes], ttl_s: float | None = None) -> None:
        check_ttl(ttl_s)
        expires_at = None if ttl_s is None else self._clock() + ttl_s
        for key, value in items.items():
            self._set(key, value, expires_at)
        self._evict()

    async def delete(self, key: str) -> None:
        self._pop(key)
        self._pop_list(key)

    async def clear(self, prefix: str | None = None) -> int:
        lists = [key for key in self._lists if prefix is None or key.startswith(prefix)]
        for key in lists:
            self._pop_list(key)
        if prefix is None:
            removed = len(self._data)
            self._data.clear()
            self._bytes = 0
            return removed + len(lists)
        doomed = [key for key in self._data if key.startswith(prefix)]
        for key in doomed:
            self._pop(key)
        return len(doomed) + len(lists)

    async def append(self, key: str, value: bytes, ttl_s: float | None = None, *,
                     vector: np.ndarray | None = None) -> None:
        check_ttl(ttl_s)
        items = self._live_list(key)
        items.append(bytes(value))
        self._lists[key] = (items, None if ttl_s is None else self._clock() + ttl_s)
        self._lists.move_to_end(key)
        self._list_bytes += len(value)
        while self._list_bytes > self.max_bytes and self._lists:
            self._pop_list(next(iter(self._lists)))
            self._evictions += 1

    async def read_list(self, key: str, start: int = 0) -> tuple[int, list[bytes]]:
        items = self._live_list(key)
        return len(items), items[start:]

    def _live_list(self, key: str) -> list[bytes]:
        found = self._lists.get(key)
        if found is None:
            return []
        items, expires_at = found
        if expires_at is not None and expires_at <= self._clock():
            self._pop_list(key)
            return []
        return items

    def _pop_list(self, key: str) -> None:
        found = self._lists.pop(key, None)
        if found is not None:
            self._list_bytes -= sum(len(v) for v in found[0])

    async def usage(self, prefix: str) -> tuple[int, int] | None:
        sizes = [len(v) for k, (v, _) in list(self._data.items()) if k.startswith(prefix)]
        return len(sizes), sum(sizes)

    async def stats(self) -> BackendStats:
        return BackendStats(entries=len(self._data), bytes=self._bytes, evictions=self._evictions)

    def _get(self, key: str, now: float) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires_at = item
        if expires_at is not None and expires_at <= now:
            self._pop(key)
            return None
        self._data.move_to_end(key)
        return value

    def _set(self, key: str, value: bytes, expires_at: float | None) -> None:
        self._pop(key)
        if len(value) > self.max_bytes:
            return
        self._data[key] = (bytes(value), expires_at)
        self._bytes += len(value)

    def _pop(self, key: str) -> None:
        item = self._data.pop(key, None)
        if item is not None:
            self._bytes -= len(item[0])

    def _evict(self) -> None:
        while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
            _, (value, _) = self._data.popitem(last=False)
            self._bytes -= len(value)
            self._evictions += 1
