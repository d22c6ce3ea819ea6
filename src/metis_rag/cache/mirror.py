"""One partition's mirrored questions in memory, and their encoding in the shared list.

A record is the answer's exact-level key, the question and its unit vector; a partition scans
its vectors exactly while small and builds an HNSW index once large (`SemanticIndex` in
`semantic.py` decides what to serve from them).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .equivalence import QuestionText, analyse

logger = logging.getLogger(__name__)

_HEADER = struct.Struct(">HH")  # lengths of the answer key and the question, then the vector


def encode_record(key: str, question: str, vector: np.ndarray) -> bytes:
    k, q = key.encode(), question.encode()
    return _HEADER.pack(len(k), len(q)) + k + q + np.asarray(vector, np.float32).tobytes()


def decode_record(data: bytes) -> tuple[str, str, np.ndarray]:
    nk, nq = _HEADER.unpack_from(data)
    at = _HEADER.size
    key, question = data[at : at + nk].decode(), data[at + nk : at + nk + nq].decode()
    return key, question, np.frombuffer(data[at + nk + nq :], dtype=np.float32)


class Partition:
    """One partition's questions: an exact scan while small, an HNSW index once large.

    `loaded`: the shared list has been read into it at least once (until then it holds only
    what this server added). Questions are analysed when first judged, not when mirrored: a
    server's first read of a long list analysed every question in it.
    """

    def __init__(self, dim: int, exact_max: int) -> None:
        self._buf = np.zeros((16, dim), dtype=np.float32)  # grown by doubling, not per add
        self._exact_max = exact_max
        self._ann: Any = None
        self._indexed = 0  # questions in `_ann`
        self.keys: list[str] = []
        self.known: set[str] = set()
        self.questions: list[str] = []
        self._texts: dict[int, QuestionText] = {}
        self.synced = 0  # items of the shared list mirrored so far
        self.last = b""  # the shared list's item at `synced - 1`, as read
        self.loaded = False

    @property
    def vectors(self) -> np.ndarray:
        return self._buf[: len(self.keys)]

    def text(self, i: int) -> QuestionText:
        found = self._texts.get(i)
        if found is None:
            found = self._texts[i] = analyse(self.questions[i])
        return found

    def extend(self, records: Iterable[tuple[str, str, np.ndarray]]) -> int:
        """Adds the records not already here; returns how many. The ANN index takes them in
        one call (one call per question, a first read of 10,000 questions took 9 s)."""
        start = len(self.keys)
        for key, question, vector in records:
            if key in self.known or vector.shape != self._buf.shape[1:]:
                continue
            n = len(self.keys)
            if n == len(self._buf):
                self._buf = np.vstack([self._buf, np.zeros_like(self._buf)])
            self._buf[n] = vector
            self.keys.append(key)
            self.known.add(key)
            self.questions.append(question)
        n = len(self.keys)
        if self._ann is None and n > self._exact_max:
            self._build_ann()
        elif self._ann is not None and n > self._indexed:
            if n > self._ann.get_max_elements():
                self._ann.resize_index(2 * n)
            self._ann.add_items(self._buf[self._indexed : n], np.arange(self._indexed, n))
        self._indexed = n if self._ann is not None else 0
        return n - start

    def _build_ann(self) -> None:
        import hnswlib

        n, dim = len(self.keys), self._buf.shape[1]
        ann = hnswlib.Index(space="ip", dim=dim)  # unit vectors: inner product = cosine
        ann.init_index(max_elements=2 * n, ef_construction=100, M=16)
        ann.add_items(self.vectors, np.arange(n))
        ann.set_ef(64)
        self._ann = ann

    def nearest(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Indexes and cosine similarities of the `k` closest questions, closest first."""
        k = min(k, len(self.keys))
        if self._ann is None:
            sims = self.vectors @ vector
            top = np.argpartition(-sims, k - 1)[:k] if k < len(sims) else np.arange(len(sims))
            return sorted(((int(i), float(sims[i])) for i in top), key=lambda t: -t[1])
        labels, distances = self._ann.knn_query(vector.reshape(1, -1), k=k)
        return [(int(i), 1.0 - float(d)) for i, d in zip(labels[0], distances[0], strict=True)]


def loaded_partition(dim: int, exact_max: int, items: list[bytes], key: str) -> Partition:
    """A partition of a shared list's items, decoded and indexed: a worker thread's job (10,000
    questions take seconds), on an object nothing else holds until it is done."""
    part = Partition(dim, exact_max)
    part.extend(readable(items, key))
    return part


def readable(items: list[bytes], key: str) -> Iterator[tuple[str, str, np.ndarray]]:
    """The records of a shared list that decode (key, question, vector); others are skipped."""
    for item in items:
        try:
            yield decode_record(item)
        except (struct.error, UnicodeDecodeError, ValueError):
            logger.warning("skipping an unreadable semantic-cache record in %s", key)
