"""The `CacheBackend` interface. Backends: `memory` (in-process LRU), `disk` (SQLite), `redis`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import numpy as np


@dataclass(frozen=True, slots=True)
class BackendStats:
    """A snapshot of one backend; `entries`/`bytes` are None where it cannot tell cheaply."""

    entries: int | None
    bytes: int | None
    evictions: int = 0
    errors: int = 0
    healthy: bool = True


class CacheBackend(ABC):
    """A byte store with per-entry TTL, keyed by str.

    Values are opaque bytes; encoding is the `Codec`'s job and tiering is `TieredCache`'s.
    ``ttl_s=None`` keeps an entry until it is evicted or deleted; a TTL must be positive.
    An expired entry is never returned. `get_many` returns only the keys it found.
    `clear(prefix)` removes every key starting with `prefix` (all of this backend's keys when
    None) and returns how many it removed, or -1 when it cannot tell. Besides entries, a key may
    name an append-only list (`append`, `read_list`: the semantic level's log, which several
    servers read); lists share the key space, `delete` and `clear` remove them too. A backend
    that `searches_lists` also keeps each item's vector and ranks a list's items against a
    question (`search_list`); the others leave that to the reader. Backends may raise on
    I/O failure (the `TieredCache` counts and skips a failing tier) except `RedisBackend`,
    which degrades to misses and no-ops by design. `start`/`close` open and release
    connections, files or pools; ``async with backend`` does both.
    """

    searches_lists = False

    async def start(self) -> None:  # noqa: B027 - deliberately a no-op for backends without I/O
        pass

    async def close(self) -> None:  # noqa: B027
        pass

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None: ...

    @abstractmethod
    async def delete(self, key: str) -> None: ...

    @abstractmethod
    async def clear(self, prefix: str | None = None) -> int: ...

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        found = {}
        for key in keys:
            value = await self.get(key)
            if value is not None:
                found[key] = value
        return found

    async def set_many(self, items: Mapping[str, bytes], ttl_s: float | None = None) -> None:
        for key, value in items.items():
            await self.set(key, value, ttl_s)

    async def append(self, key: str, value: bytes, ttl_s: float | None = None, *,
                     vector: np.ndarray | None = None) -> None:
        """Append `value` to the list at `key` (a new list if there is none) and set the whole
        list's TTL to `ttl_s` from now; `vector` is kept for `search_list` where it searches.
        This default rewrites one entry, so it is atomic within one process only: a backend
        that several processes share overrides it."""
        check_ttl(ttl_s)
        old = await self.get(key)
        await self.set(key, (old or b"") + len(value).to_bytes(4, "big") + value, ttl_s)

    async def read_list(self, key: str, start: int = 0) -> tuple[int, list[bytes]] | None:
        """The list's length and its items from index `start` on; (0, []) when there is none.
        A length below what a reader saw before means the list was cleared or expired. A read
        that fails raises, or returns None (`RedisBackend`): never (0, []), which means empty."""
        data = await self.get(key) or b""
        items, i = [], 0
        while i < len(data):
            size = int.from_bytes(data[i : i + 4], "big")
            items.append(data[i + 4 : i + 4 + size])
            i += 4 + size
        return len(items), items[start:]

    async def search_list(self, key: str, vector: np.ndarray, k: int) -> list[bytes] | None:
        """The items of the list at `key` whose vectors are the `k` closest to `vector` by
        cosine, closest first ([] for no list); None where the backend does not search lists.
        Items appended without a vector, or with one of another dimension, are never found."""
        return None

    @abstractmethod
    async def stats(self) -> BackendStats: ...

    async def usage(self, prefix: str) -> tuple[int, int] | None:
        """(entries, bytes) of the keys starting with `prefix`, or None where that is not cheap
        to tell (Redis would have to scan the whole keyspace)."""
        return None


def check_ttl(ttl_s: float | None) -> None:
    if ttl_s is not None and not ttl_s > 0:
        raise ValueError(f"ttl_s must be positive or None, got {ttl_s!r}")
