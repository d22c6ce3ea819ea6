"""Fusion of the dense and full-text legs into one ranking (chosen by benchmarks/bench_retrieval.py).

Every candidate of either leg gets its exact cosine (the retriever reads its stored vector
anyway), so the dense side never has a hole; a chunk the full-text leg did not return scores 0
there. Each leg is then scaled to [0, 1] over the candidates and mixed with a weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

FusionMethod = Literal["convex", "rrf"]
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
