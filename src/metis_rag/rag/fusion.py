"""Fusion of the dense and full-text legs into one ranking (chosen by benchmarks/bench_retrieval.py).

Every candidate of either leg gets its exact cosine (the retriever reads its stored vector
anyway), so the dense side never has a hole. The default, `terms`, adds to that cosine a bonus
for the query's words in the chunk and in its file name: bounded and absolute, where a scaled
BM25 score gives the best full-text hit full marks even when every hit is poor.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from ..store.fulltext import fulltext_terms
from ..store.repo import ChunkRow

Normalisation = Literal["minmax", "zscore", "dbsf"]


def rrf(rankings: Sequence[Sequence[int]], k: int,
        weights: Sequence[float] | None = None) -> dict[int, float]:
    """Reciprocal rank fusion: sum of weight / (k + rank) over the lists an id appears in."""
    fused: dict[int, float] = {}
    for n, ranking in enumerate(rankings):
        w = 1.0 if weights is None else weights[n]
        for rank, chunk_id in enumerate(ranking, start=1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + w / (k + rank)
    return fused


def normalise(scores: np.ndarray, how: Normalisation) -> np.ndarray:
    """Scores mapped to about [0, 1]: by their range, z-score or mean ± 3 sd (DBSF), clipped."""
    if scores.size == 0:
        return scores
    if how == "minmax":
        lo, hi = float(scores.min()), float(scores.max())
    else:
        mean, sd = float(scores.mean()), float(scores.std())
        spread = 3.0 if how == "dbsf" else 1.0
        lo, hi = mean - spread * sd, mean + spread * sd
    if hi - lo < 1e-9:
        return np.ones_like(scores)
    return np.clip((scores - lo) / (hi - lo), 0.0, 1.0)


def convex(dense: Mapping[int, float], lexical: Mapping[int, float], dense_weight: float,
           how: Normalisation = "minmax") -> dict[int, float]:
    """dense_weight * norm(cosine) + (1 - dense_weight) * norm(full-text score), over `dense`'s
    ids (every candidate, with its exact cosine); ids absent from `lexical` score 0 there."""
    ids = list(dense)
    if not ids:
        return {}
    d = normalise(np.array([dense[i] for i in ids], dtype=np.float64), how)
    present = [i for i in ids if i in lexical]
    lex = np.zeros(len(ids))
    if present:
        scaled = normalise(np.array([lexical[i] for i in present], dtype=np.float64), how)
        where = {i: n for n, i in enumerate(ids)}
        for i, s in zip(present, scaled, strict=True):
            lex[where[i]] = s
    mixed = dense_weight * d + (1.0 - dense_weight) * lex
    return {i: float(s) for i, s in zip(ids, mixed, strict=True)}


def lexical_confidence(lexical: Mapping[int, float]) -> float:
    """How far the best full-text hit stands above the next, 0-1: (s1 - s2) / s1. A pasted
    phrase or a rare name stands out; a question whose words are everywhere does not."""
    top = sorted(lexical.values(), reverse=True)[:2]
    if not top or top[0] <= 0:
        return 0.0
    if len(top) == 1:
        return 1.0
    return max(0.0, (top[0] - top[1]) / top[0])


# Punctuation becomes a space, so that " word" finds a word's start (str methods, no regex:
# this runs over up to 2 x candidates chunks per query).
_SEPARATORS = str.maketrans(dict.fromkeys(string.punctuation, " "))


def _normal(text: str) -> str:
    return " " + " ".join(text.lower().translate(_SEPARATORS).split()) + " "


def _row_key(term: str) -> re.Pattern[str]:
    """A line that starts with `term` as its key, then a column: "redis\t6379/tcp",
    "SIGTERM      15", "timeout = 30", "ssh: 22", "tcp 6"."""
    return re.compile(r"^[ \t]*" + re.escape(term) + r"(?![\w-])(?:\t|[ ]{2,}|[ ]*[:=]|[ ]+\d)",
                      re.I | re.M)


def _rarity(df: int, pool: int) -> float:
    """1 for a word in one candidate, falling to 0 for a word in all of them."""
    return 1.0 if pool <= 1 else max(0.0, 1.0 - math.log(df) / math.log(pool))


def terms(query: str, scores: Mapping[int, float], rows: Mapping[int, ChunkRow],
          coverage_weight: float, name_weight: float, phrase_weight: float = 0.0,
          keyed_rows: bool = True) -> dict[int, float]:
    """`scores` plus coverage_weight x (share of the query's content words in the chunk),
    name_weight x (their share in the document's file name) and phrase_weight x exactness,
    over 1 + the weights. A content word matches any word starting with its first six
    letters, a poor man's stemmer. Exactness is the share of the query's adjacent word pairs
    in the chunk (a pasted line matches them all, a question hardly any), or, if higher, a
    table row keyed by a query word, as rare among the candidates as that word is: in a
    chunk of 15 rows of /etc/services the "redis" row is drowned for the cosine, and a word
    share cannot tell "redis" from "port", which every other chunk has too. `keyed_rows=False`
    leaves rows out (bench_retrieval.py compares both)."""
    words = list(dict.fromkeys(fulltext_terms(query)))
    starts = [f" {t[:6]}" for t in words]
    if not starts:
        return dict(scores)
    q = _normal(query).split()
    pairs = [f" {a} {b} " for a, b in dict.fromkeys(zip(q, q[1:], strict=False))]
    use_phrase = bool(phrase_weight)
    # Divided by the largest bonus possible so that a score stays at most 1, like a cosine.
    scale = 1.0 + coverage_weight + name_weight + phrase_weight
    texts = {i: _normal(rows[i].text) for i in scores}
    present = {i: [t in text for t in starts] for i, text in texts.items()}
    df = [sum(hit[n] for hit in present.values()) for n in range(len(starts))]
    keys = [_row_key(w) for w in words] if use_phrase and keyed_rows else []
    out = {}
    for i, score in scores.items():
        row = rows[i]
        hits = present[i]
        name = _normal(row.filename)
        bonus = coverage_weight * sum(hits) / len(starts)
        bonus += name_weight * sum(t in name for t in starts) / len(starts)
        if use_phrase:
            exact = sum(p in texts[i] for p in pairs) / len(pairs) if pairs else 0.0
            for n, key in enumerate(keys):
                if hits[n] and key.search(row.text):
                    exact = max(exact, _rarity(df[n], len(scores)))
            bonus += phrase_weight * exact
        out[i] = (score + bonus) / scale
    return out
