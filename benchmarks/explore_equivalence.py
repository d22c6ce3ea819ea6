"""Candidate equivalence models measured against the shipped one, out of fold on the calibration
split only (issue 10). Nothing here is shipped; it says which idea earns its place.

    python benchmarks/explore_equivalence.py [--boot 1000]

Each candidate is fitted and scored with `fit_equivalence.py`'s protocol (5 folds by passage,
only the pairs that pass the hard checks reach the model, the others score 0) and compared on
precision at recall 0.3 / 0.5, the recall at which precision is still 0.98, and the gain in
precision at recall 0.5 over the shipped logistic model with a 95 % interval from resampling
passages (a candidate is worth adopting only when that interval excludes 0). Hyper-parameters
are chosen inside each training fold (inner 4-fold cross-validation by passage, log loss).

1. pair head: the hand features plus |u-v| and u*v of the frozen MiniLM sentence embeddings
   (SBERT's classifier head), or |u-v| alone, or both after a PCA of the embeddings; L2
   logistic regression;
2. adapter: u + (u P) Q^T, rank r, trained contrastively (a logistic loss on the scaled cosine,
   paraphrases near, near misses far) on the training fold; its cosine (and square) added to
   the hand features; the stacked logistic model sees inner-fold adapter cosines only;
3. gradient boosting (scikit-learn's HistGradientBoosting) over the hand features, alone or
   with |u-v|.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fit_equivalence as fe
import semantic_pairs

Mask = np.ndarray
FitPredict = Callable[[Mask, Mask], np.ndarray]


class Data:
    def __init__(self) -> None:
        self.pairs = semantic_pairs.load_pairs("calibration")
        texts = sorted({q for r in self.pairs for q in (r.a, r.b)})
        vec = asyncio.run(fe.embed(texts))
        self.x, self.y, self.scored = fe.design(self.pairs, vec)
        self.u = np.array([vec[p.a] for p in self.pairs])
        self.v = np.array([vec[p.b] for p in self.pairs])
        self.passage = np.array([p.passage for p in self.pairs])
        self.fold = np.array([hashlib.blake2b(p.passage.encode()).digest()[1] % fe.FOLDS
                              for p in self.pairs])

    def out_of_fold(self, fit_predict: FitPredict) -> np.ndarray:
        oof = np.zeros(len(self.y))
        for k in range(fe.FOLDS):
            train, test = self.scored & (self.fold != k), self.scored & (self.fold == k)
            oof[test] = fit_predict(train, test)
        return oof


def precision_at(scores: np.ndarray, y: np.ndarray, recall: float) -> float:
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(y[order])
    k = int(np.searchsorted(tp, recall * y.sum()))
    return float(tp[k] / (k + 1))


def recall_at_precision(scores: np.ndarray, y: np.ndarray, precision: float = 0.98) -> float:
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(y[order])
    ok = tp / np.arange(1, len(tp) + 1) >= precision
    return float(tp[ok].max() / y.sum()) if ok.any() else 0.0


def gain_interval(d: Data, new: np.ndarray, old: np.ndarray, n: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    names = np.unique(d.passage)
    rows = {p: np.flatnonzero(d.passage == p) for p in names}
    gains = []
    for _ in range(n):
        sel = np.concatenate([rows[p] for p in rng.choice(names, len(names))])
        gains.append(precision_at(new[sel], d.y[sel], 0.5) - precision_at(old[sel], d.y[sel], 0.5))
    return float(np.quantile(gains, 0.025)), float(np.quantile(gains, 0.975))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-z)))


def shipped(d: Data) -> FitPredict:
    def fp(train: Mask, test: Mask) -> np.ndarray:
        w, b = fe.fit(d.x[train], d.y[train])
        return sigmoid(d.x[test] @ w + b)
    return fp


def pair_head(d: Data, parts: str, pca_dims: int | None = None) -> FitPredict:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def design(rows: np.ndarray, pca: PCA | None) -> np.ndarray:
        u, v = d.u[rows], d.v[rows]
        if pca is not None:
            u, v = pca.transform(u), pca.transform(v)
        cols = [d.x[rows], np.abs(u - v)] + ([u * v] if parts == "both" else [])
        return np.hstack(cols)

    def fp(train: Mask, test: Mask) -> np.ndarray:
        tr, te = np.flatnonzero(train), np.flatnonzero(test)
        pca = None
        if pca_dims:
            pca = PCA(pca_dims, random_state=0).fit(np.unique(np.r_[d.u[tr], d.v[tr]], axis=0))
        f, y = design(tr, pca), d.y[tr]

        def model(c: float) -> object:
            return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))

        best = (np.inf, 1.0)
        for c in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0):
            pred = np.zeros(len(tr))
            for i, j in GroupKFold(4).split(f, y, d.passage[tr]):
                pred[j] = model(c).fit(f[i], y[i]).predict_proba(f[j])[:, 1]  # type: ignore[attr-defined]
            best = min(best, (log_loss(y, pred), c))
        final = model(best[1]).fit(f, y)  # type: ignore[attr-defined]
        return np.asarray(final.predict_proba(design(te, pca))[:, 1])
    return fp


def adapter(d: Data, rank: int, l2: float, steps: int = 300) -> FitPredict:
    import torch
    from sklearn.model_selection import GroupKFold

    def train_adapter(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch.manual_seed(0)
        u = torch.tensor(d.u[rows], dtype=torch.float32)
        v = torch.tensor(d.v[rows], dtype=torch.float32)
        y = torch.tensor(d.y[rows], dtype=torch.float32)
        p = torch.nn.Parameter(0.01 * torch.randn(u.shape[1], rank))
        q = torch.nn.Parameter(0.01 * torch.randn(u.shape[1], rank))
        scale, shift = torch.nn.Parameter(torch.tensor(10.0)), torch.nn.Parameter(torch.tensor(-8.0))
        opt = torch.optim.Adam([p, q, scale, shift], lr=0.01)
        for _ in range(steps):
            opt.zero_grad()
            cos = torch.nn.functional.cosine_similarity(u + u @ p @ q.T, v + v @ p @ q.T)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                scale * cos + shift, y, pos_weight=(1 - y).sum() / y.sum())
            (loss + l2 * (p.pow(2).sum() + q.pow(2).sum())).backward()
            opt.step()
        return p.detach().numpy(), q.detach().numpy()

    def cosine(rows: np.ndarray, pq: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        p, q = pq
        u, v = d.u[rows] + d.u[rows] @ p @ q.T, d.v[rows] + d.v[rows] @ p @ q.T
        return np.asarray((u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1))

    def fp(train: Mask, test: Mask) -> np.ndarray:
        # The adapter learns from every training-fold pair (near misses that fail a hard check
        # too); the stacked model is fitted on cosines of adapters that did not see the pair.
        fold_rows = np.flatnonzero(~np.isin(d.passage, d.passage[test]))
        tr, te = np.flatnonzero(train), np.flatnonzero(test)
        inner = np.zeros(len(tr))
        for i, j in GroupKFold(4).split(tr, groups=d.passage[tr]):
            rows = fold_rows[np.isin(d.passage[fold_rows], d.passage[tr[i]])]
            inner[j] = cosine(tr[j], train_adapter(rows))
        outer = cosine(te, train_adapter(fold_rows))
        w, b = fit_unsigned_tail(np.c_[d.x[tr], inner, inner**2], d.y[tr], 2)
        return sigmoid(np.c_[d.x[te], outer, outer**2] @ w + b)
    return fp


def fit_unsigned_tail(x: np.ndarray, y: np.ndarray, tail: int) -> tuple[np.ndarray, float]:
    """`fe.fit`'s sign rule (hand features <= 0) with the last `tail` columns left free."""
    free = np.ones(x.shape[1], bool)
    while True:
        w, b = fe._newton(x[:, free], y)
        full = np.zeros(x.shape[1])
        full[free] = w
        wrong = [j for j in range(2, x.shape[1] - tail) if full[j] > 0]
        if not wrong:
            return full, b
        free[wrong] = False


def boosted(d: Data, with_diff: bool) -> FitPredict:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import log_loss
    from sklearn.model_selection import GroupKFold

    grid = [{"max_depth": 2, "learning_rate": 0.05, "max_iter": 200},
            {"max_depth": 3, "learning_rate": 0.05, "max_iter": 200},
            {"max_depth": 3, "learning_rate": 0.03, "max_iter": 400, "min_samples_leaf": 40}]

    def design(rows: np.ndarray) -> np.ndarray:
        return np.hstack([d.x[rows], np.abs(d.u[rows] - d.v[rows])]) if with_diff else d.x[rows]

    def fp(train: Mask, test: Mask) -> np.ndarray:
        tr, te = np.flatnonzero(train), np.flatnonzero(test)
        f, y = design(tr), d.y[tr]
        best: tuple[float, int] = (np.inf, 0)
        for g, params in enumerate(grid):
            pred = np.zeros(len(tr))
            for i, j in GroupKFold(4).split(f, y, d.passage[tr]):
                m = HistGradientBoostingClassifier(random_state=0, l2_regularization=1.0,
                                                   **params)  # type: ignore[arg-type]
                pred[j] = m.fit(f[i], y[i]).predict_proba(f[j])[:, 1]
            best = min(best, (log_loss(y, pred), g))
        m = HistGradientBoostingClassifier(random_state=0, l2_regularization=1.0,
                                           **grid[best[1]])  # type: ignore[arg-type]
        return np.asarray(m.fit(f, y).predict_proba(design(te))[:, 1])
    return fp


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--boot", type=int, default=1000)
    a = p.parse_args()
    d = Data()
    base = d.out_of_fold(shipped(d))
    candidates: list[tuple[str, Callable[[], FitPredict]]] = [
        ("shipped logistic model", lambda: shipped(d)),
        ("1. pair head |u-v|, u*v (768)", lambda: pair_head(d, "both")),
        ("1. pair head |u-v| (384)", lambda: pair_head(d, "diff")),
        ("1. pair head |u-v|, u*v, PCA 32", lambda: pair_head(d, "both", 32)),
        ("2. adapter rank 16, l2 0.01", lambda: adapter(d, 16, 0.01)),
        ("2. adapter rank 64, l2 0.01", lambda: adapter(d, 64, 0.01)),
        ("3. boosted, hand features", lambda: boosted(d, False)),
        ("3. boosted, hand features + |u-v|", lambda: boosted(d, True)),
    ]
    print(f"{len(d.y)} calibration pairs, {int(d.y.sum())} same-question, "
          f"{len(np.unique(d.passage))} passages; out of fold ({fe.FOLDS} folds by passage)")
    print(f"{'candidate':36} {'P@0.3':>6} {'P@0.5':>6} {'R@P.98':>6}  gain at 0.5 [95% interval]")
    for name, make in candidates:
        oof = base if name.startswith("shipped") else d.out_of_fold(make())
        lo, hi = gain_interval(d, oof, base, a.boot)
        gain = precision_at(oof, d.y, 0.5) - precision_at(base, d.y, 0.5)
        print(f"{name:36} {precision_at(oof, d.y, 0.3):6.3f} {precision_at(oof, d.y, 0.5):6.3f} "
              f"{recall_at_precision(oof, d.y):6.3f}  {gain:+.3f} [{lo:+.3f}, {hi:+.3f}]",
              flush=True)


if __name__ == "__main__":
    main()
