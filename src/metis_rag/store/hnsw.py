"""Embedded `VectorStore` on hnswlib: one HNSW index per collection, persisted under a directory.

Each collection lives in `<directory>/<collection_id>/` as `index-<gen>.bin` (hnswlib's format),
`ids-<gen>.bin` (live ids, then tombstoned ids, as int64) and `manifest.json`, which names the
current generation with the sizes and CRCs of both files. `flush` writes a new generation and
renames the manifest over the old one last, so a crash leaves the previous flush intact; a file
that fails its checks loads as an empty collection, which start-up reconciliation refills.

hnswlib allows concurrent `knn_query` calls but not `knn_query` alongside `add_items`,
`mark_deleted` or `resize_index`, so each collection has a readers-writer lock. Adds take the
write lock in slices sized to hold it for about `max_write_hold_ms`, so searches wait little.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import threading
import time
import zlib
from collections.abc import Collection, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path

import hnswlib
import numpy as np

from .durable import check_file, crc32_of, fsync_dir, fsync_file, write_durably
from .rwlock import RWLock
from .vectors import VectorHit, unique_batch

logger = logging.getLogger(__name__)

_FORMAT = 1
_MIN_CAPACITY = 1024


class _Collection:
    """One collection's index and the ids it holds; `lock` guards all of it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = RWLock()
        self.index: hnswlib.Index | None = None
        self.live: set[int] = set()
        # Ids marked deleted that may still own a slot in the graph (until a new id reuses
        # it). Re-adding one must unmark it first: hnswlib refuses to update a deleted label.
        self.tombstones: set[int] = set()
        self.generation = 0
        self.dirty = False


class HnswVectorStore:
    """`VectorStore` backed by hnswlib indexes in `directory`, loaded lazily per collection."""

    backend = "hnsw"

    def __init__(
        self,
        directory: Path,
        dim: int,
        *,
        ef_search: int = 96,
        m: int = 16,
        ef_construction: int = 200,
        exact_scan_max: int = 2048,
        max_write_hold_ms: float = 5.0,
        add_threads: int = 0,
    ) -> None:
        self._directory = Path(directory)
        self._dim = dim
        self._ef_search = ef_search
        self._m = m
        self._ef_construction = ef_construction
        self._exact_scan_max = exact_scan_max
        self._max_write_hold_s = max_write_hold_ms / 1000
        self._add_threads = add_threads or os.cpu_count() or 1
        self._collections: dict[int, _Collection] = {}
        self._registry_lock = threading.Lock()  # guards `_collections` and loading
        self._flush_lock = threading.Lock()

    async def start(self) -> None:
        self._directory.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        await self.flush()
        with self._registry_lock:
            self._collections.clear()

    async def add(self, collection_id: int, ids: Sequence[int], vectors: np.ndarray) -> None:
        labels, data = unique_batch(ids, vectors, self._dim)
        if not len(labels):
            return
        col = await self._collection(collection_id)
        await asyncio.to_thread(self._add, col, labels, data)

    async def delete(self, collection_id: int, ids: Sequence[int]) -> None:
        col = await self._collection(collection_id)
        await asyncio.to_thread(self._delete, col, [int(i) for i in ids])

    async def drop_collection(self, collection_id: int) -> None:
        await asyncio.to_thread(self._drop, collection_id)

    async def search(
        self,
        collection_id: int,
        query: np.ndarray,
        k: int,
        *,
        allowed_ids: Collection[int] | None = None,
    ) -> list[VectorHit]:
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self._dim:
            raise ValueError(f"expected a query of dimension {self._dim}, got {q.shape[0]}")
        if allowed_ids is not None and not isinstance(allowed_ids, AbstractSet):
            allowed_ids = set(allowed_ids)  # membership tests below must be O(1)
        col = await self._collection(collection_id)
        # A search takes ~1 ms, less than a hop to a worker thread costs, so it runs right on
        # the event loop unless a writer holds the index; then it waits in a thread instead.
        if col.lock.try_acquire_read():
            try:
                return self._search(col, q, k, allowed_ids)
            finally:
                col.lock.release_read()
        return await asyncio.to_thread(self._search_waiting, col, q, k, allowed_ids)

    async def ids(self, collection_id: int) -> set[int]:
        col = await self._collection(collection_id)
        return await asyncio.to_thread(self._ids, col)

    async def count(self, collection_id: int) -> int:
        col = await self._collection(collection_id)
        return len(col.live)

    async def flush(self) -> None:
        with self._registry_lock:
            dirty = [col for col in self._collections.values() if col.dirty]
        for col in dirty:
            await asyncio.to_thread(self._flush, col)

    # -- collections and loading

    async def _collection(self, collection_id: int) -> _Collection:
        col = self._collections.get(collection_id)
        if col is None:
            col = await asyncio.to_thread(self._load, collection_id)
        return col

    def _load(self, collection_id: int) -> _Collection:
        with self._registry_lock:
            col = self._collections.get(collection_id)
            if col is None:
                col = _Collection(self._directory / str(collection_id))
                try:
                    self._read_files(col)
                except Exception as exc:  # a torn or foreign file must not take the server down
                    logger.warning("vector index %s is unreadable (%s); starting it empty",
                                   col.path, exc)
                    col.index, col.live, col.tombstones = None, set(), set()
                    col.dirty = True  # the next flush replaces the bad files
                self._collections[collection_id] = col
            return col

    def _read_files(self, col: _Collection) -> None:
        manifest_path = col.path / "manifest.json"
        if not manifest_path.exists():
            return
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != _FORMAT or manifest.get("dim") != self._dim:
            raise ValueError(f"unsupported manifest {manifest_path}")
        col.generation = int(manifest["generation"])
        ids_path = col.path / manifest["ids_file"]
        check_file(ids_path, manifest["ids_bytes"], manifest["ids_crc32"])
        ids = np.frombuffer(ids_path.read_bytes(), dtype="<i8")
        n_live = int(manifest["live"])
        if manifest["index_file"] is not None:
            index_path = col.path / manifest["index_file"]
            # hnswlib trusts the offsets in the file it loads: check it is the one we wrote.
            check_file(index_path, manifest["index_bytes"], manifest["index_crc32"])
            index = hnswlib.Index(space="cosine", dim=self._dim)
            index.load_index(str(index_path), allow_replace_deleted=True)
            index.set_ef(self._ef_search)
            col.index = index
        col.live = set(ids[:n_live].tolist())
        col.tombstones = set(ids[n_live:].tolist())

    # -- writes (worker threads)

    def _add(self, col: _Collection, labels: np.ndarray, data: np.ndarray) -> None:
        batch, start = 16, 0
        while start < len(labels):
            stop = min(start + batch, len(labels))
            t0 = time.perf_counter()
            with col.lock.write():
                self._add_locked(col, labels[start:stop], data[start:stop])
            per_vector_s = (time.perf_counter() - t0) / (stop - start)
            batch = max(1, min(4096, int(self._max_write_hold_s / max(per_vector_s, 1e-7))))
            start = stop

    def _add_locked(self, col: _Collection, labels: np.ndarray, data: np.ndarray) -> None:
        if col.index is None:
            col.index = hnswlib.Index(space="cosine", dim=self._dim)
            col.index.init_index(
                max_elements=max(_MIN_CAPACITY, len(labels)), M=self._m,
                ef_construction=self._ef_construction, allow_replace_deleted=True,
            )
            col.index.set_ef(self._ef_search)
        index = col.index
        is_update = np.fromiter((int(i) in col.live for i in labels), bool, len(labels))
        for row in np.flatnonzero(~is_update):
            label = int(labels[row])
            if label in col.tombstones:
                col.tombstones.discard(label)
                try:
                    index.unmark_deleted(label)
                    is_update[row] = True
                except RuntimeError:
                    pass  # its slot went to another id: add it as new
        fresh = int((~is_update).sum())
        if index.element_count + fresh > index.max_elements:
            index.resize_index(max(index.element_count + fresh, math.ceil(index.max_elements * 1.5)))
        # Updates must not take a freed slot: hnswlib would then keep the old one under the
        # same label. New ids may, which keeps the graph from filling with tombstones.
        if is_update.any():
            index.add_items(data[is_update], labels[is_update], num_threads=self._add_threads)
        if fresh:
            index.add_items(data[~is_update], labels[~is_update],
                            num_threads=self._add_threads, replace_deleted=True)
        col.live.update(labels.tolist())
        col.dirty = True

    def _delete(self, col: _Collection, ids: list[int]) -> None:
        with col.lock.write():
            for label in ids:
                if label in col.live and col.index is not None:
                    col.index.mark_deleted(label)
                    col.live.discard(label)
                    col.tombstones.add(label)
                    col.dirty = True

    def _drop(self, collection_id: int) -> None:
        with self._flush_lock, self._registry_lock:
            col = self._collections.pop(collection_id, None)
            if col is not None:
                with col.lock.write():
                    col.index, col.live, col.tombstones, col.dirty = None, set(), set(), False
            path = self._directory / str(collection_id)
            if path.exists():
                # Rename first so that a crash halfway through the delete cannot leave a
                # half-removed collection that still looks loadable.
                trash = path.with_name(f".dropped-{collection_id}-{time.time_ns()}")
                path.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)

    def _flush(self, col: _Collection) -> None:
        with self._flush_lock:
            if not col.dirty:  # flushed meanwhile, or dropped
                return
            col.path.mkdir(parents=True, exist_ok=True)
            gen = col.generation + 1
            index_name: str | None = f"index-{gen}.bin"
            ids_name = f"ids-{gen}.bin"
            # save_index may run beside knn_query but not beside add_items: a read lock.
            with col.lock.read():
                live = np.fromiter(col.live, dtype="<i8", count=len(col.live))
                tomb = np.fromiter(col.tombstones, dtype="<i8", count=len(col.tombstones))
                if col.index is not None and col.live:
                    col.index.save_index(str(col.path / f"{index_name}.tmp"))
                else:
                    index_name, tomb = None, tomb[:0]
                col.dirty = False
            ids_bytes = np.concatenate([live, tomb]).tobytes()
            manifest = {
                "format": _FORMAT, "dim": self._dim, "generation": gen, "live": len(live),
                "ids_file": ids_name, "ids_bytes": len(ids_bytes),
                "ids_crc32": zlib.crc32(ids_bytes), "index_file": index_name,
            }
            write_durably(col.path / f"{ids_name}.tmp", ids_bytes)
            os.replace(col.path / f"{ids_name}.tmp", col.path / ids_name)
            if index_name is not None:
                tmp = col.path / f"{index_name}.tmp"
                fsync_file(tmp)
                manifest["index_bytes"] = tmp.stat().st_size
                manifest["index_crc32"] = crc32_of(tmp)
                os.replace(tmp, col.path / index_name)
            write_durably(col.path / "manifest.json.tmp", json.dumps(manifest).encode())
            os.replace(col.path / "manifest.json.tmp", col.path / "manifest.json")
            fsync_dir(col.path)
            col.generation = gen
            for stale in col.path.iterdir():
                if stale.name not in {"manifest.json", ids_name, index_name}:
                    stale.unlink(missing_ok=True)

    # -- reads

    def _ids(self, col: _Collection) -> set[int]:
        with col.lock.read():
            return set(col.live)

    def _search_waiting(
        self, col: _Collection, q: np.ndarray, k: int, allowed: AbstractSet[int] | None
    ) -> list[VectorHit]:
        with col.lock.read():
            return self._search(col, q, k, allowed)

    def _search(
        self, col: _Collection, q: np.ndarray, k: int, allowed: AbstractSet[int] | None
    ) -> list[VectorHit]:
        index, n = col.index, len(col.live)
        if index is None or k <= 0 or n == 0:
            return []
        if allowed is None:
            try:
                return _hits(*index.knn_query(q, k=min(k, n), num_threads=1))
            except RuntimeError:  # tombstones cut a tiny graph apart: fewer than k reachable
                return self._exact(col, q, k, list(col.live))
        if len(allowed) <= self._exact_scan_max:
            return self._exact(col, q, k, [i for i in allowed if i in col.live])
        # Over-fetch unfiltered: hnswlib searches with ef = max(ef, fetch), so asking for
        # twice the expected share of disallowed ids costs about one plain search.
        fetch = min(n, math.ceil(2 * k * n / len(allowed)))
        if fetch <= 4 * self._ef_search:
            labels, dists = index.knn_query(q, k=fetch, num_threads=1)
            keep = np.fromiter((int(i) in allowed for i in labels[0]), bool, fetch)
            if keep.sum() >= k:
                return _hits(labels[:, keep][:, :k], dists[:, keep][:, :k])
        # Few allowed ids near the query: let hnswlib skip disallowed nodes itself.
        try:
            return _hits(*index.knn_query(q, k=k, num_threads=1, filter=allowed.__contains__))
        except RuntimeError:  # fewer than k allowed ids are live
            return self._exact(col, q, k, [i for i in allowed if i in col.live])

    def _exact(self, col: _Collection, q: np.ndarray, k: int, ids: list[int]) -> list[VectorHit]:
        if not ids or col.index is None:
            return []
        vectors = np.asarray(col.index.get_items(ids), dtype=np.float32)  # unit-normalised
        scores = vectors @ (q / max(float(np.linalg.norm(q)), 1e-12))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(ids) else np.arange(len(ids))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [VectorHit(int(ids[i]), float(scores[i])) for i in top]


def _hits(labels: np.ndarray, distances: np.ndarray) -> list[VectorHit]:
    # hnswlib's cosine space returns 1 - cosine.
    return [VectorHit(int(i), 1.0 - float(d)) for i, d in zip(labels[0], distances[0], strict=True)]
