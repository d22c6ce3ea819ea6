"""`TieredCache`: one cache of Python values over a sequence of backends, fastest first."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import CorruptEntry
from ..observability.tracing import traced
from .base import CacheBackend
from .codec import Codec

logger = logging.getLogger(__name__)

_MISSING = object()


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache was built. Latencies are means over `get` calls, in ms."""

    hits: int
    misses: int
    sets: int
    errors: int
    corrupt_dropped: int
    mean_hit_ms: float
    mean_miss_ms: float
    bytes_written: int
    hits_by_tier: tuple[int, ...]

    @property
    def hit_ratio(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"hit_ratio": self.hit_ratio}


class TieredCache:
    """Reads tiers in order and copies a hit into the faster tiers before it; writes all tiers.

    Keys are stored as ``prefix + key`` so several caches (one per level) can share backends.
    A tier that raises is skipped and counted in `errors`; an entry that fails to decode is
    deleted from its tier and counted in `corrupt_dropped`; neither fails the call. The cache
    does not start or close its backends, since they may be shared. `clock` is wall-clock
    seconds, used for the expiry stored in each entry so back-filled copies keep the
    remaining TTL rather than a fresh one.
    """

    def __init__(
        self,
        backends: Sequence[CacheBackend],
        *,
        prefix: str = "",
        default_ttl_s: float | None = None,
        codec: Codec | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not backends:
            raise ValueError("TieredCache needs at least one backend")
        self.backends = tuple(backends)
        self.prefix = prefix
        self.default_ttl_s = default_ttl_s
        self.codec = codec or Codec()
        self._clock = clock
        self._hits_by_tier = [0] * len(self.backends)
        self._misses = 0
        self._sets = 0
        self._errors = 0
        self._tier_errors = [0] * len(self.backends)
        self._corrupt_dropped = 0
        self._bytes_written = 0
        self._timed_hits = 0
        self._hit_time_s = 0.0
        self._timed_misses = 0
        self._miss_time_s = 0.0

    @traced("cache.lookup", lambda self, *_, **__: {"metis.cache.level": self.prefix[:-1]},
            lambda value: {"metis.cache.hit": value is not None})
    async def get(self, key: str, default: Any = None) -> Any:
        started = time.perf_counter()
        full_key = self.prefix + key
        for tier, backend in enumerate(self.backends):
            try:
                data = await backend.get(full_key)
            except Exception as exc:
                self._tier_failed(tier, "get", exc)
                continue
            if data is None:
                continue
            value, ttl_s = await self._decode(tier, full_key, data)
            if value is _MISSING:
                continue
            for faster in range(tier):
                write = self.backends[faster].set(full_key, data, ttl_s)
                await self._try(faster, "backfill", write)
            self._hits_by_tier[tier] += 1
            self._timed_hits += 1
            self._hit_time_s += time.perf_counter() - started
            return value
        self._misses += 1
        self._timed_misses += 1
        self._miss_time_s += time.perf_counter() - started
        return default

    @traced("cache.lookup", lambda self, keys: {"metis.cache.level": self.prefix[:-1],
                                                "metis.cache.keys": len(keys)},
            lambda found: {"metis.cache.hits": len(found)})
    async def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """Return the keys found, each tier asked once for the keys still missing."""
        missing = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        for tier, backend in enumerate(self.backends):
            if not missing:
                break
            try:
                datas = await backend.get_many([self.prefix + k for k in missing])
            except Exception as exc:
                self._tier_failed(tier, "get_many", exc)
                continue
            backfill: dict[str, bytes] = {}
            backfill_ttl_s: float | None = None
            for key in missing:
                full_key = self.prefix + key
                data = datas.get(full_key)
                if data is None:
                    continue
                value, ttl_s = await self._decode(tier, full_key, data)
                if value is _MISSING:
                    continue
                found[key] = value
                backfill[full_key] = data
                # One TTL per batch write: the shortest remaining one never outlives an entry.
                if ttl_s is not None:
                    backfill_ttl_s = ttl_s if backfill_ttl_s is None else min(backfill_ttl_s, ttl_s)
            self._hits_by_tier[tier] += len(backfill)
            if backfill:
                missing = [k for k in missing if k not in found]
                for faster in range(tier):
                    write = self.backends[faster].set_many(backfill, backfill_ttl_s)
                    await self._try(faster, "backfill", write)
        self._misses += len(missing)
        return found

    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        ttl_s = self.default_ttl_s if ttl_s is None else ttl_s
        data = self._encode(value, ttl_s)
        for tier, backend in enumerate(self.backends):
            await self._try(tier, "set", backend.set(self.prefix + key, data, ttl_s))
        self._sets += 1
        self._bytes_written += len(data)

    async def set_many(self, items: Mapping[str, Any], ttl_s: float | None = None) -> None:
        ttl_s = self.default_ttl_s if ttl_s is None else ttl_s
        datas = {self.prefix + k: self._encode(v, ttl_s) for k, v in items.items()}
        if not datas:
            return
        for tier, backend in enumerate(self.backends):
            await self._try(tier, "set_many", backend.set_many(datas, ttl_s))
        self._sets += len(datas)
        self._bytes_written += sum(len(d) for d in datas.values())

    async def delete(self, key: str) -> None:
        for tier, backend in enumerate(self.backends):
            await self._try(tier, "delete", backend.delete(self.prefix + key))

    async def clear(self, prefix: str | None = None) -> None:
        """Remove this cache's keys starting with `prefix` (all when None) from every tier."""
        full_prefix = self.prefix + (prefix or "")
        for tier, backend in enumerate(self.backends):
            await self._try(tier, "clear", backend.clear(full_prefix or None))

    def stats(self) -> CacheStats:
        return CacheStats(
            hits=sum(self._hits_by_tier),
            misses=self._misses,
            sets=self._sets,
            errors=self._errors,
            corrupt_dropped=self._corrupt_dropped,
            mean_hit_ms=_mean_ms(self._hit_time_s, self._timed_hits),
            mean_miss_ms=_mean_ms(self._miss_time_s, self._timed_misses),
            bytes_written=self._bytes_written,
            hits_by_tier=tuple(self._hits_by_tier),
        )

    def _encode(self, value: Any, ttl_s: float | None) -> bytes:
        if ttl_s is not None and not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive or None, got {ttl_s!r}")
        expires_at = None if ttl_s is None else self._clock() + ttl_s
        return self.codec.encode(value, expires_at=expires_at)

    async def _decode(self, tier: int, full_key: str, data: bytes) -> tuple[Any, float | None]:
        """The value and its remaining TTL, or `_MISSING` for an expired or corrupt entry."""
        try:
            value, expires_at = self.codec.decode(data)
        except CorruptEntry as exc:
            self._corrupt_dropped += 1
            logger.warning("dropping corrupt cache entry %r from tier %d: %s", full_key, tier, exc)
            await self._try(tier, "delete", self.backends[tier].delete(full_key))
            return _MISSING, None
        if expires_at is None:
            return value, None
        ttl_s = expires_at - self._clock()
        # The backend's own TTL should have hidden it; this catches clock skew between hosts.
        return (value, ttl_s) if ttl_s > 0 else (_MISSING, None)

    async def _try(self, tier: int, operation: str, call: Any) -> None:
        try:
            await call
        except Exception as exc:
            self._tier_failed(tier, operation, exc)

    def _tier_failed(self, tier: int, operation: str, exc: Exception) -> None:
        self._errors += 1
        self._tier_errors[tier] += 1
        # The first failure of a tier is worth a traceback; the rest only move the counter.
        log = logger.warning if self._tier_errors[tier] == 1 else logger.debug
        log(
            "cache tier %d (%s) failed on %s: %s",
            tier,
            type(self.backends[tier]).__name__,
            operation,
            exc,
            exc_info=self._tier_errors[tier] == 1,
        )


def _mean_ms(total_s: float, count: int) -> float:
    return total_s / count * 1000 if count else 0.0
