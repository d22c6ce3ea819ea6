"""Persistent cache in one SQLite file (WAL mode), shared safely by several processes."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .base import BackendStats, CacheBackend, check_ttl

if TYPE_CHECKING:
    import numpy as np

T = TypeVar("T")

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    size INTEGER NOT NULL,
    expires_at REAL,
    accessed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_access ON entries (accessed_at);
CREATE INDEX IF NOT EXISTS entries_by_expiry ON entries (expires_at) WHERE expires_at IS NOT NULL;
-- Running totals kept by triggers, so bounds are checked without scanning the table.
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    entries INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals VALUES (0, 0, 0);
CREATE TRIGGER IF NOT EXISTS entries_inserted AFTER INSERT ON entries BEGIN
    UPDATE totals SET entries = entries + 1, bytes = bytes + NEW.size WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS entries_deleted AFTER DELETE ON entries BEGIN
    UPDATE totals SET entries = entries - 1, bytes = bytes - OLD.size WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS entries_resized AFTER UPDATE OF size ON entries BEGIN
    UPDATE totals SET bytes = bytes - OLD.size + NEW.size WHERE id = 0;
END;
-- Append-only lists (the semantic level's log): one row per list, one per item.
CREATE TABLE IF NOT EXISTS lists (
    key TEXT PRIMARY KEY,
    length INTEGER NOT NULL,
    expires_at REAL
);
CREATE TABLE IF NOT EXISTS list_items (
    key TEXT NOT NULL,
    position INTEGER NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (key, position)
) WITHOUT ROWID;
COMMIT;
"""

_UPSERT = """
INSERT INTO entries (key, value, size, expires_at, accessed_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, size = excluded.size,
    expires_at = excluded.expires_at, accessed_at = excluded.accessed_at
"""

# SQLite's default limit on host parameters is 32766; stay far below it.
_BATCH = 500


class DiskBackend(CacheBackend):
    """Entries live in ``<directory>/cache.sqlite3`` and survive restarts.

    Eviction removes expired entries, then the least recently used, once `max_entries` or
    `max_bytes` (sum of value sizes) is exceeded. `clock` returns wall-clock seconds, because
    expiry times are persisted and read by other processes. Recency is tracked to within
    `touch_interval_s`: a hit rewrites its access time only when it is older than that, so hot
    keys do not turn every read into a write that contends for the database lock.
    SQLite calls run on one dedicated thread, off the event loop.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        max_entries: int = 1_000_000,
        max_bytes: int = 1024 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
        touch_interval_s: float = 1.0,
        busy_timeout_s: float = 5.0,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be positive")
        self.path = Path(directory) / "cache.sqlite3"
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._touch_interval_s = touch_interval_s
        self._busy_timeout_s = busy_timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._evictions = 0

    async def start(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metis-disk-cache")
        try:
            await self._run(self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            await self._run(self._close)
        finally:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def get(self, key: str) -> bytes | None:
        return (await self._run(self._get_many, [key])).get(key)

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        return await self._run(self._get_many, list(dict.fromkeys(keys)))

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        check_ttl(ttl_s)
        await self._run(self._set_many, {key: value}, ttl_s)

    async def set_many(self, items: Mapping[str, bytes], ttl_s: float | None = None) -> None:
        check_ttl(ttl_s)
        if items:
            await self._run(self._set_many, dict(items), ttl_s)

    async def delete(self, key: str) -> None:
        await self._run(self._delete_where, "key = ?", (key,))

    async def clear(self, prefix: str | None = None) -> int:
        if not prefix:
            return await self._run(self._delete_where, "1", ())
        end = _prefix_end(prefix)
        if end is None:
            return await self._run(self._delete_where, "key >= ?", (prefix,))
        return await self._run(self._delete_where, "key >= ? AND key < ?", (prefix, end))

    async def append(self, key: str, value: bytes, ttl_s: float | None = None, *,
                     vector: np.ndarray | None = None) -> None:
        check_ttl(ttl_s)
        await self._run(self._append, key, value, ttl_s)

    async def read_list(self, key: str, start: int = 0) -> tuple[int, list[bytes]]:
        return await self._run(self._read_list, key, start)

    async def usage(self, prefix: str) -> tuple[int, int] | None:
        end = _prefix_end(prefix)
        where, params = ("key >= ? AND key < ?", (prefix, end)) if end else ("key >= ?", (prefix,))
        return await self._run(self._usage, where, params)

    def _usage(self, where: str, params: tuple[str, ...]) -> tuple[int, int]:
        entries, size = self._db().execute(
            f"SELECT count(*), coalesce(sum(size), 0) FROM entries WHERE {where}", params
        ).fetchone()
        return int(entries), int(size)

    async def stats(self) -> BackendStats:
        entries, size = await self._run(self._totals)
        return BackendStats(entries=entries, bytes=size, evictions=self._evictions)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("DiskBackend is not started; call start() or use `async with`")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # Everything below runs on the backend's thread.

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        try:
            # WAL lets readers in other processes proceed while one process writes; NORMAL
            # sync only risks the last transactions on power loss, which a cache can afford.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            # The script carries its own BEGIN IMMEDIATE/COMMIT: executescript() commits any
            # transaction opened around it, which would let two processes race on the schema.
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("DiskBackend is closed")
        return self._conn

    def _get_many(self, keys: list[str]) -> dict[str, bytes]:
        conn = self._db()
        now = self._clock()
        found: dict[str, bytes] = {}
        expired: list[tuple[str, float]] = []
        stale: list[tuple[float, str]] = []
        for start in range(0, len(keys), _BATCH):
            chunk = keys[start : start + _BATCH]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT key, value, expires_at, accessed_at FROM entries WHERE key IN ({marks})",
                chunk,
            )
            for key, value, expires_at, accessed_at in rows:
                if expires_at is not None and expires_at <= now:
                    expired.append((key, now))
                    continue
                found[key] = value
                if now - accessed_at >= self._touch_interval_s:
                    stale.append((now, key))
        if expired or stale:
            with _transaction(conn):
                conn.executemany("DELETE FROM entries WHERE key = ? AND expires_at <= ?", expired)
                conn.executemany("UPDATE entries SET accessed_at = ? WHERE key = ?", stale)
        return found

    def _set_many(self, items: dict[str, bytes], ttl_s: float | None) -> None:
        conn = self._db()
        now = self._clock()
        expires_at = None if ttl_s is None else now + ttl_s
        rows, too_big = [], []
        for key, value in items.items():
            if len(value) <= self.max_bytes:
                rows.append((key, value, len(value), expires_at, now))
            else:
                too_big.append((key,))
        with _transaction(conn):
            conn.executemany(_UPSERT, rows)
            conn.executemany("DELETE FROM entries WHERE key = ?", too_big)
            self._evict(conn, now)

    def _evict(self, conn: sqlite3.Connection, now: float) -> None:
        entries, size = conn.execute("SELECT entries, bytes FROM totals").fetchone()
        if entries <= self.max_entries and size <= self.max_bytes:
            return
        conn.execute("DELETE FROM entries WHERE expires_at <= ?", (now,))
        entries, size = conn.execute("SELECT entries, bytes FROM totals").fetchone()
        victims = []
        rows = conn.execute("SELECT rowid, size FROM entries ORDER BY accessed_at, rowid")
        for rowid, row_size in rows:
            if entries <= self.max_entries and size <= self.max_bytes:
                break
            victims.append((rowid,))
            entries -= 1
            size -= row_size
        rows.close()
        conn.executemany("DELETE FROM entries WHERE rowid = ?", victims)
        self._evictions += len(victims)

    def _delete_where(self, where: str, params: tuple[str, ...]) -> int:
        conn = self._db()
        with _transaction(conn):
            removed = conn.execute(f"DELETE FROM entries WHERE {where}", params).rowcount
            conn.execute(f"DELETE FROM list_items WHERE {where}", params)
            return removed + conn.execute(f"DELETE FROM lists WHERE {where}", params).rowcount

    def _append(self, key: str, value: bytes, ttl_s: float | None) -> None:
        conn = self._db()
        now = self._clock()
        with _transaction(conn):
            # Expired lists go here (one row per list, so this stays cheap), this one included.
            expired = "SELECT key FROM lists WHERE expires_at <= ?"
            conn.execute(f"DELETE FROM list_items WHERE key IN ({expired})", (now,))
            conn.execute("DELETE FROM lists WHERE expires_at <= ?", (now,))
            row = conn.execute("SELECT length FROM lists WHERE key = ?", (key,)).fetchone()
            length = 0 if row is None else row[0]
            conn.execute("INSERT OR REPLACE INTO list_items VALUES (?, ?, ?)", (key, length, value))
            conn.execute("INSERT OR REPLACE INTO lists VALUES (?, ?, ?)",
                         (key, length + 1, None if ttl_s is None else now + ttl_s))

    def _read_list(self, key: str, start: int) -> tuple[int, list[bytes]]:
        conn = self._db()
        conn.execute("BEGIN")  # one snapshot: the length and the items agree
        try:
            row = conn.execute("SELECT length, expires_at FROM lists WHERE key = ?",
                               (key,)).fetchone()
            if row is None or (row[1] is not None and row[1] <= self._clock()):
                return 0, []  # an expired list is removed by the next append, or by clear
            rows = conn.execute("SELECT value FROM list_items WHERE key = ? AND position >= ? "
                                "ORDER BY position", (key, start)).fetchall()
            return int(row[0]), [r[0] for r in rows]
        finally:
            conn.execute("COMMIT")

    def _totals(self) -> tuple[int, int]:
        entries, size = self._db().execute("SELECT entries, bytes FROM totals").fetchone()
        return int(entries), int(size)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front (waiting up to busy_timeout), instead of failing
    # with SQLITE_BUSY when a read transaction later tries to upgrade while another process writes.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix`, or None if none."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates cannot be stored as UTF-8; skip past them
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None
