"""The semantic level: earlier questions per partition, and the decision to reuse an answer.

Each partition is one (namespace, collection, version, answer shape), so a lookup never crosses
tenants, collections, versions or answer-shaping settings. The questions of a partition live in
an append-only list in the configured cache backend (Redis, PostgreSQL or the disk cache: shared
by every server that uses it, durable across restarts; none for `memory`), which each server
mirrors in memory and catches up on with one `read_list` round trip per lookup. A backend that
`searches_lists` (PostgreSQL with pgvector) instead returns a lookup's few nearest questions in
that round trip, and nothing is mirrored. A new collection version is a new partition, so
invalidation reaches every server at once; old lists age out by TTL. A list that cannot be read
(backend down) leaves the mirror as it is: it keeps serving, and the next read that succeeds
catches up from where the mirror stopped (a searched list cannot serve meanwhile).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ..observability.tracing import traced
from .base import CacheBackend
from .equivalence import Equivalence, QuestionText, Verdict, analyse
from .mirror import Partition, encode_record, loaded_partition, readable

logger = logging.getLogger(__name__)

_INLINE_LOAD_MAX = 256  # a first read of more questions is decoded and indexed in a thread

# Why a lookup served nothing: the first failed check of its best candidate (`Equivalence.judge`)
# or its answer gone from the exact level; listed so that /metrics reports each from zero.
REJECT_REASONS = ("similarity", "identifiers", "question_type", "negation", "order_direction",
                  "content_words", "score", "answer_gone")


@dataclass(frozen=True, slots=True)
class Candidate:
    key: str  # the exact-level key of the cached answer
    question: str
    text: QuestionText
    similarity: float


@dataclass(frozen=True, slots=True)
class Match:
    candidate: Candidate
    verdict: Verdict


class SemanticIndex:
    """Earlier questions per partition; `match` returns the one a new question may reuse.

    `log` is the backend holding the shared list of each partition (None: this process only).
    The `candidates` nearest questions are each judged by `equivalence`; the most similar one
    judged the same question wins. Partitions are evicted from memory least recently used
    beyond `max_entries` questions in all (the shared lists stay, and are read again if needed).
    `mirror`: mirror the lists even where the backend could search them. A partition's first
    read (a server's first lookup in it) runs in the background: a lookup waits for it at most
    `warm_wait_ms` and meanwhile is answered from what this server holds, or by the backend's
    search where it has one (a first read of 10,000 questions took 13 s).
    """

    def __init__(self, dim: int, max_entries: int, equivalence: Equivalence,
                 log: CacheBackend | None = None, ttl_s: float | None = None,
                 candidates: int = 4, exact_max: int = 2048, mirror: bool = False,
                 warm_wait_ms: float = 5.0) -> None:
        self._dim = dim
        self._exact_max = exact_max
        self._max_entries = max_entries
        self.equivalence = equivalence
        self._log = log
        self._mirror = mirror
        # Searched candidates come back as text: analysing a question once per server, not once
        # per lookup, is what the mirror does too.
        self._analyse = lru_cache(maxsize=4096)(analyse)
        self._ttl_s = ttl_s
        self._candidates = candidates
        self._parts: OrderedDict[tuple[str, ...], Partition] = OrderedDict()
        self._warm_wait_s = warm_wait_ms / 1000
        self._warming: dict[tuple[str, ...], asyncio.Task[None]] = {}
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.skipped = 0  # lookups not run: the level cannot serve (`serving`)
        self.log_errors = 0  # shared-list reads and appends that failed
        self.warming_lookups = 0  # lookups answered while their partition's first read ran
        self.rejected: Counter[str] = Counter()  # lookups with candidates but no hit, by reason

    @staticmethod
    def log_key(partition: tuple[str, ...]) -> str:
        rest = hashlib.blake2b("\x1f".join(partition[1:]).encode(), digest_size=16).hexdigest()
        return f"semantic:{partition[0]}:{rest}"

    @property
    def searched(self) -> bool:
        """True when the backend finds a lookup's nearest questions (no mirror is kept)."""
        return self._log is not None and self._log.searches_lists and not self._mirror

    @property
    def serving(self) -> bool:
        """False when the error bound admits no hit: callers skip the lookup and the work done
        only for it (embedding the question)."""
        return self.equivalence.off_reason is None

    def skip(self) -> None:
        """Count a lookup the caller did not run because the level is not `serving`."""
        with self._lock:
            self.skipped += 1

    @traced("cache.lookup", lambda *_, **__: {"metis.cache.level": "semantic"},
            lambda hit: {"metis.cache.hit": hit is not None})
    async def match(self, partition: tuple[str, ...], vector: np.ndarray, question: str, *,
                    caught_up: bool = False) -> Match | None:
        """`caught_up`: the caller has just run `catch_up(partition)` (while it embedded the
        question: the read does not need the vector)."""
        if not self.serving:
            self.skip()
            return None
        found = (await self._search(partition, vector) if self.searched
                 else await self._nearest(partition, vector, caught_up))
        if not found:
            with self._lock:
                self.misses += 1
            return None
        text = analyse(question)
        first: Verdict | None = None
        for candidate in found:
            verdict = self.equivalence.judge(text, candidate.text, candidate.similarity)
            if verdict.same:
                self.hits += 1
                return Match(candidate, verdict)
            first = first or verdict
        self.reject(first.reason if first else "similarity")
        return None

    async def catch_up(self, partition: tuple[str, ...]) -> None:
        """Bring the mirror of `partition` up to date (nothing to do where lookups search)."""
        if self.serving and not self.searched:
            await self._catch_up(partition)

    async def _nearest(self, partition: tuple[str, ...], vector: np.ndarray,
                       caught_up: bool) -> list[Candidate]:
        if not caught_up:
            await self._catch_up(partition)
        with self._lock:
            part = self._parts.get(partition)
            warming = partition in self._warming
            self.warming_lookups += warming
            searchable = self._log is not None and self._log.searches_lists
            if not (warming and searchable) and part is not None and part.keys:
                self._parts.move_to_end(partition)
                return [Candidate(part.keys[i], part.questions[i], part.text(i), sim)
                        for i, sim in part.nearest(vector, self._candidates)]
        # The mirror is still reading the list: where the backend searches, it sees all of it.
        return await self._search(partition, vector) if warming and searchable else []

    async def _search(self, partition: tuple[str, ...], vector: np.ndarray) -> list[Candidate]:
        assert self._log is not None
        key = self.log_key(partition)
        try:
            items = await self._log.search_list(key, vector, self._candidates)
        except Exception:  # e.g. the database is unreachable: a miss
            items = None
        if items is None:
            self._log_failed("search")
            return []
        # The similarity the mirror would compute (float32), not the database's float8.
        found = [Candidate(k, q, self._analyse(q), float(v @ vector))
                 for k, q, v in readable(items, key)]
        return sorted(found, key=lambda c: -c.similarity)

    def reject(self, reason: str, was_hit: bool = False) -> None:
        """Count a lookup that served nothing; `was_hit`: `match` had counted it a hit (its
        answer turned out to be gone)."""
        with self._lock:
            if was_hit:
                self.hits -= 1
            self.misses += 1
            self.rejected[reason] += 1

    async def add(self, partition: tuple[str, ...], vector: np.ndarray, key: str,
                  question: str) -> None:
        if not self.serving or self.searched:
            # Not mirrored: this server never reads a mirror (it cannot serve, or the backend
            # searches), but a server sharing the list can serve what is appended now.
            if self._log is not None:
                await self._append(partition, key, question, vector)
            return
        with self._lock:
            added = self._add(partition, vector, key, question)
        if added and self._log is not None:
            await self._append(partition, key, question, vector)

    async def _append(self, partition: tuple[str, ...], key: str, question: str,
                      vector: np.ndarray) -> None:
        assert self._log is not None
        try:
            await self._log.append(self.log_key(partition), encode_record(key, question, vector),
                                   self._ttl_s, vector=vector)
        except Exception:  # the answer was served; a lost record is only a missed hit later
            self._log_failed("append to")

    async def _catch_up(self, partition: tuple[str, ...]) -> None:
        """Mirror what other servers (or this one before a restart) added to the shared list."""
        if self._log is None:
            return
        key = self.log_key(partition)
        with self._lock:
            part = self._parts.get(partition)
            if part is None or not part.loaded:
                part = None
            else:
                start, last = part.synced, part.last
        if part is None:
            await self._warm(partition)
            return
        # One item read back: a list cleared (or lost by a Redis restart) and refilled past
        # `start` passes a length check, but no longer holds the item the mirror read there.
        overlap = 1 if start > 0 else 0
        found = await self._read(key, start - overlap)
        if found is None:  # unreadable, not empty: keep serving from the mirror
            return
        length, items = found
        if overlap and not (length >= start and items and items[0] == last):
            with self._lock:  # cleared or expired meanwhile: start the mirror over
                self._drop(partition)
            await self._warm(partition)
            return
        items = items[overlap:]
        if not items and length == start:
            return
        with self._lock:
            part = self._parts.get(partition)
            if part is None:  # evicted meanwhile
                return
            self._size += part.extend(readable(items, key))
            self._evict(partition)
            if length >= part.synced:
                part.synced = length
                part.last = items[-1] if items else part.last

    async def wait_warm(self, partition: tuple[str, ...]) -> None:
        """Returns once the partition's first read, if one runs, is done (tests, benchmarks)."""
        task = self._warming.get(partition)
        if task is not None:
            await asyncio.shield(task)

    async def _warm(self, partition: tuple[str, ...]) -> None:
        """Start the partition's first read unless it runs already; wait for it a little."""
        task = self._warming.get(partition)
        if task is None:
            task = asyncio.create_task(self._first_read(partition))
            self._warming[partition] = task
            # A task cancelled before it ran never reaches _first_read's own cleanup.
            task.add_done_callback(lambda done: self._end_warming(partition, done))
        await asyncio.wait((task,), timeout=self._warm_wait_s)

    async def _first_read(self, partition: tuple[str, ...]) -> None:
        try:
            await self._load_logged(partition)
        finally:
            # Warming ends in the step that loaded the entries, not in a callback a loop turn
            # later: a lookup that sees the entries is not counted as a warming one.
            task = asyncio.current_task()
            if task is not None:
                self._end_warming(partition, task)

    def _end_warming(self, partition: tuple[str, ...], task: asyncio.Future[None]) -> None:
        if self._warming.get(partition) is task:
            del self._warming[partition]

    async def _load_logged(self, partition: tuple[str, ...]) -> None:
        try:
            await self._load(partition)
        except Exception:  # nobody awaits this task: say it here; the next lookup tries again
            logger.exception("could not mirror a semantic-cache list")

    async def _load(self, partition: tuple[str, ...]) -> None:
        key = self.log_key(partition)
        found = await self._read(key, 0)
        if found is None:  # unreadable: the next lookup tries again
            return
        length, items = found
        if len(items) > _INLINE_LOAD_MAX:
            loaded = await asyncio.to_thread(loaded_partition, self._dim, self._exact_max,
                                             items, key)
        else:
            loaded = loaded_partition(self._dim, self._exact_max, items, key)
        loaded.synced, loaded.last, loaded.loaded = length, items[-1] if items else b"", True
        with self._lock:
            old = self._parts.pop(partition, None)
            if old is not None:  # what this server added meanwhile, or while the list was down
                self._size -= len(old.keys)
                loaded.extend(zip(old.keys, old.questions, old.vectors, strict=True))
            self._parts[partition] = loaded
            self._size += len(loaded.keys)
            self._evict(partition)

    async def _read(self, key: str, start: int) -> tuple[int, list[bytes]] | None:
        assert self._log is not None
        try:
            found = await self._log.read_list(key, start)
        except Exception:  # e.g. the database is unreachable
            found = None
        if found is None:
            self._log_failed("read")
        return found

    def _log_failed(self, what: str) -> None:
        with self._lock:
            self.log_errors += 1
            first = self.log_errors == 1
        # The backend logs its own health changes; this says what the level does about it.
        (logger.warning if first else logger.debug)(
            "could not %s a semantic-cache list; %s", what,
            "no semantic hits meanwhile" if self.searched
            else "serving from this server's mirror")

    def _add(self, partition: tuple[str, ...], vector: np.ndarray, key: str,
             question: str) -> bool:
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = Partition(self._dim, self._exact_max)
            part.loaded = self._log is None  # nothing to read
        if not part.extend([(key, question, vector)]):
            return False
        self._size += 1
        self._evict(partition)
        return True

    def _evict(self, keep: tuple[str, ...]) -> None:
        while self._size > self._max_entries and len(self._parts) > 1:
            oldest = next(iter(self._parts))
            self._drop(oldest if oldest != keep else list(self._parts)[1])

    def _drop(self, partition: tuple[str, ...]) -> None:
        part = self._parts.pop(partition, None)
        if part is not None:
            self._size -= len(part.keys)

    async def clear(self, namespace: str | None = None, prefix: str = "") -> None:
        """`prefix`: only the namespaces that start with it (a tenant's)."""
        with self._lock:
            for p in [p for p in self._parts if (namespace is None or p[0] == namespace)
                      and p[0].startswith(prefix)]:
                self._drop(p)
        if self._log is not None:
            await self._log.clear(f"semantic:{namespace}:" if namespace else f"semantic:{prefix}")

    @property
    def entries(self) -> int:
        return self._size

    def stats(self) -> dict[str, Any]:
        lookups = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses,
                "hit_ratio": self.hits / lookups if lookups else 0.0, "entries": self._size,
                "rejected": dict(self.rejected), "max_error": self.equivalence.max_error,
                "score_threshold": round(self.equivalence.threshold, 4),
                "shared": self._log is not None, "serving": self.serving,
                "search": "backend" if self.searched else "mirror",
                "off_reason": self.equivalence.off_reason, "skipped": self.skipped,
                "log_errors": self.log_errors, "warming_lookups": self.warming_lookups}
