"""Fit the semantic cache's equivalence model on the calibration split of the labelled pairs.

    python benchmarks/fit_equivalence.py [--check]

Writes `src/metis_rag/cache/equivalence.json`: the logistic-regression coefficients over
`metis_rag.cache.equivalence.FEATURES` (fitted on every calibration pair), and the calibration
curve the run-time threshold is read from. The curve is built from out-of-fold scores (5 folds
by passage), so the threshold is not chosen on scores of pairs the model was fitted on; the
report also holds the threshold out (read off four folds' curve, applied to the fifth). The
test split is never read here. `--check` fits and prints without writing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
import semantic_pairs
from metis_rag.cache.equivalence import (
    FEATURES,
    Equivalence,
    Model,
    analyse,
    features,
    passes_hard_checks,
)
from metis_rag.config import EmbedSettings
from metis_rag.embed import build_embedder

OUT = Path(__file__).resolve().parents[1] / "src" / "metis_rag" / "cache" / "equivalence.json"
MIN_COSINE = 0.5  # below it no pair of the calibration split is the same question
L2 = 0.01
FOLDS = 5
MAX_ERRORS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2)


async def embed(texts: list[str]) -> dict[str, np.ndarray]:
    harness.prepared_models()
    embedder = build_embedder(EmbedSettings(), harness.MODEL_HOME)
    await embedder.start()
    try:
        vectors = await embedder.embed(texts)
    finally:
        await embedder.close()
    return dict(zip(texts, vectors, strict=True))


def design(pairs: list[semantic_pairs.Pair], vec: dict[str, np.ndarray]) -> tuple[
        np.ndarray, np.ndarray, np.ndarray]:
    """Features, labels, and whether the pair reaches the model (passes the hard checks)."""
    xs, ys, scored = [], [], []
    for p in pairs:
        a, b = analyse(p.a), analyse(p.b)
        cosine = float(vec[p.a] @ vec[p.b])
        x = features(a, b, cosine)
        xs.append(x)
        ys.append(float(p.same))
        scored.append(cosine >= MIN_COSINE and passes_hard_checks(a, b, x))
    return np.array(xs), np.array(ys), np.array(scored)


def fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method on standardised features.

    Every signal but the two cosine terms is evidence *against* equivalence by construction,
    so a weight the data would make positive (terse paraphrases drop words, for instance) is
    held at zero and the rest refitted: the model must not learn that a difference helps."""
    free = np.ones(x.shape[1], bool)
    while True:
        weights, bias = _newton(x[:, free], y)
        full = np.zeros(x.shape[1])
        full[free] = weights
        wrong = [j for j in range(2, x.shape[1]) if full[j] > 0]
        if not wrong:
            return full, bias
        free[wrong] = False


def _newton(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = np.hstack([np.ones((len(x), 1)), (x - mu) / sd])
    w = np.zeros(z.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-z @ w))
        reg = L2 * np.r_[0.0, w[1:]]
        grad = z.T @ (p - y) + reg
        hess = (z * (p * (1 - p))[:, None]).T @ z + L2 * np.diag(np.r_[0.0, np.ones(len(w) - 1)])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    weights = w[1:] / sd
    return weights, float(w[0] - (weights * mu).sum())


def model_of(weights: np.ndarray, bias: float, curve: list[tuple[float, int, int]]) -> Model:
    return Model(tuple(float(v) for v in weights), bias, tuple(curve), MIN_COSINE)


def curve_of(scores: np.ndarray, y: np.ndarray, points: int = 400) -> list[tuple[float, int, int]]:
    out = []
    for t in np.unique(np.quantile(scores[scores > 0], np.linspace(0, 1, points))):
        above = scores >= t
        out.append((round(float(t), 6), int(above.sum()), int((above & (y == 0)).sum())))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--check", action="store_true")
    a = p.parse_args()
    pairs = semantic_pairs.load_pairs("calibration")
    vec = asyncio.run(embed(sorted({q for r in pairs for q in (r.a, r.b)})))
    x, y, scored = design(pairs, vec)
    weights, bias = fit(x[scored], y[scored])
    # Out-of-fold scores for the curve: FOLDS folds by passage.
    fold = np.array([hashlib.blake2b(r.passage.encode()).digest()[1] % FOLDS for r in pairs])
    oof = np.zeros(len(pairs))
    for k in range(FOLDS):
        train = scored & (fold != k)
        wk, bk = fit(x[train], y[train])
        m = model_of(wk, bk, [])
        test = scored & (fold == k)
        oof[test] = [m.score(row) for row in x[test]]
    curve = curve_of(oof, y)
    model = model_of(weights, bias, curve)
    for max_error in MAX_ERRORS:
        t = Equivalence(model, max_error).threshold
        # Held out twice: the threshold of fold k is read off the other folds' curve, then
        # applied to fold k's out-of-fold scores. This is the error the bound promises.
        hits = wrong = 0
        for k in range(FOLDS):
            tk = Equivalence(model_of(weights, bias, curve_of(oof[fold != k], y[fold != k])),
                             max_error).threshold
            took = (oof >= tk) & (fold == k)
            hits, wrong = hits + int(took.sum()), wrong + int((took & (y == 0)).sum())
        above = oof >= t
        tp = int((above & (y == 1)).sum())
        print(f"max_error {max_error:.3f}: threshold {t:.4f}, out-of-fold 1 - precision "
              f"{1 - tp / above.sum() if above.sum() else 0:.4f}, recall {tp / y.sum():.4f}, "
              f"hits {int(above.sum())}; threshold held out too: 1 - precision "
              f"{wrong / hits if hits else 0:.4f} over {hits} hits")
    pos = y.sum()
    order = np.argsort(-oof)
    tp = np.cumsum(y[order])
    for recall in (0.3, 0.4, 0.5, 0.6, 0.7):
        k = int(np.searchsorted(tp, recall * pos))
        print(f"  out-of-fold precision at recall {recall:.1f}: {tp[k] / (k + 1):.4f}")
    print("weights:", dict(zip(FEATURES, np.round(weights, 3), strict=True)), "bias",
          round(bias, 3))
    if not a.check:
        OUT.write_text(json.dumps({
            "features": list(FEATURES), "weights": [round(float(v), 6) for v in weights],
            "bias": round(bias, 6), "min_cosine": MIN_COSINE,
            "fitted_on": "benchmarks/data/semantic_pairs.jsonl, split=calibration, "
                         f"{len(pairs)} pairs; embedder {EmbedSettings().model}",
            "curve": curve,
        }, indent=1) + "\n")
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
