"""Experiment: does answer/evidence consistency make the semantic cache's decision more precise?

    python benchmarks/fit_evidence.py [--units sentence,clause,window]

When the cached question Q1 was answered, Metis knew its top source. A second question Q2 about
the same passage but another attribute should be best matched by *another part* of that
source than Q1 was. Per pair (a = Q1 cached, b = Q2 asked), with the pair's labelled passage
standing in for Q1's top chunk (the benchmark collections hold one passage per document, so
that is what retrieval returns first), the source is cut into units (sentences; clauses at
`.;:,`; or 8-word windows, stride 4) and each unit embedded with the shipped embedder:

- `argmax_differs`: the unit closest to Q2 is not the unit closest to Q1 (idea a);
- `q2_prefers_other`: cos(Q2, its best unit) - cos(Q2, Q1's best unit), >= 0 (idea a, graded);
- `answer_fit_drop`: cos(Q1, u1) - cos(Q2, u1), u1 = Q1's best unit standing in for a focused
  answer (idea b);
- `profile_gap`: max over units of |cos(Q1, u) - cos(Q2, u)| (the two questions' profiles);
- `lexical_span_differs`: the extractive answerer's own best sentence (IDF word overlap over
  the source's clauses) differs for Q1 and Q2 (idea c).

Protocol as `fit_equivalence.py`: calibration split only, 5 folds by passage, the model
refitted per fold on the pairs that pass the hard checks, precision at fixed recall read off
the out-of-fold scores (recall over all same-question pairs). Baseline = the shipped features
alone under the same protocol. The test split is never read.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fit_equivalence
import semantic_pairs
from metis_rag.rag.answer import split_sentences
from metis_rag.store.repo import fulltext_terms

EVIDENCE = ("argmax_differs", "q2_prefers_other", "answer_fit_drop", "profile_gap",
            "lexical_span_differs", "profile_js")
RECALLS = (0.3, 0.4, 0.5, 0.6)
_CLAUSE = re.compile(r"(?<=[.;:,])\s+")


def units_of(text: str, kind: str) -> list[str]:
    if kind == "sentence":
        return split_sentences(text) or [text]
    if kind == "clause":
        return [u for u in (c.strip() for c in _CLAUSE.split(text)) if len(u) > 1] or [text]
    words = text.split()
    if len(words) <= 8:
        return [text]
    return [" ".join(words[i : i + 8]) for i in range(0, len(words) - 4, 4)]


def lexical_best(question: str, units: list[str]) -> int:
    """The extractive answerer's scoring (IDF-weighted question words) over one source's units."""
    terms = set(fulltext_terms(question))
    words = [set(fulltext_terms(u)) for u in units]
    df = Counter(w for ws in words for w in ws & terms)
    n = len(units)
    scores = [sum(math.log(1 + n / df[w]) for w in ws & terms) for ws in words]
    return int(np.argmax(scores))


def evidence(a: str, b: str, units: list[str], vec: dict[str, np.ndarray]) -> list[float]:
    u = np.stack([vec[t] for t in units])
    ca, cb = u @ vec[a], u @ vec[b]
    ia, ib = int(np.argmax(ca)), int(np.argmax(cb))
    return [float(ia != ib), float(cb[ib] - cb[ia]), float(ca[ia] - cb[ia]),
            float(np.abs(ca - cb).max()), float(lexical_best(a, units) != lexical_best(b, units)),
            _js(_softmax(ca), _softmax(cb))]


def _softmax(c: np.ndarray, temperature: float = 0.05) -> np.ndarray:
    e = np.exp((c - c.max()) / temperature)
    return e / e.sum()


def _js(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (bits) of where in the source the two questions point."""
    m = (p + q) / 2
    return float(sum((np.sum(d * np.log2(np.maximum(d, 1e-12) / m))) / 2 for d in (p, q)))


def precision_at(oof: np.ndarray, y: np.ndarray, recall: float) -> float:
    order = np.argsort(-oof, kind="stable")
    tp = np.cumsum(y[order])
    k = int(np.searchsorted(tp, recall * y.sum()))
    return float(tp[k] / (k + 1)) if k < len(tp) else float("nan")


def recall_at(oof: np.ndarray, y: np.ndarray, precision: float) -> float:
    """The largest recall at which the pairs scored highest are still `precision` right."""
    order = np.argsort(-oof, kind="stable")
    tp = np.cumsum(y[order])
    ok = tp / np.arange(1, len(tp) + 1) >= precision
    return float(tp[ok].max() / y.sum()) if ok.any() else 0.0


def bootstrap_gain(base: np.ndarray, new: np.ndarray, y: np.ndarray, passage: np.ndarray,
                   recall: float, rounds: int = 1000) -> tuple[float, float]:
    """90 % interval of P@recall(new) - P@recall(base), resampling passages (pairs of one
    passage are not independent)."""
    rng = np.random.default_rng(0)
    ids = np.unique(passage)
    rows = {pid: np.flatnonzero(passage == pid) for pid in ids}
    gains = []
    for _ in range(rounds):
        take = np.concatenate([rows[pid] for pid in rng.choice(ids, len(ids))])
        gains.append(precision_at(new[take], y[take], recall)
                     - precision_at(base[take], y[take], recall))
    lo, hi = np.nanquantile(gains, [0.05, 0.95])
    return float(lo), float(hi)


def out_of_fold(x: np.ndarray, y: np.ndarray, scored: np.ndarray, fold: np.ndarray) -> np.ndarray:
    oof = np.zeros(len(y))
    for k in range(fit_equivalence.FOLDS):
        train = scored & (fold != k)
        w, b = fit_equivalence.fit(x[train], y[train])
        test = scored & (fold == k)
        z = np.clip(b + x[test] @ w, -60, 60)
        oof[test] = 1 / (1 + np.exp(-z))
    return oof


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--units", default="sentence,clause,window")
    args = p.parse_args()
    pairs = semantic_pairs.load_pairs("calibration")
    passages = {ps.id: ps for ps in semantic_pairs.load_passages()}
    kinds = args.units.split(",")
    units = {(pid, k): units_of(passages[pid].text, k) for pid in {r.passage for r in pairs}
             for k in kinds}
    texts = {q for r in pairs for q in (r.a, r.b)} | {t for us in units.values() for t in us}
    vec = asyncio.run(fit_equivalence.embed(sorted(texts)))
    x, y, scored = fit_equivalence.design(pairs, vec)
    fold = np.array([hashlib.blake2b(r.passage.encode()).digest()[1] % fit_equivalence.FOLDS
                     for r in pairs])
    n_units = Counter(len(units[(r.passage, k)]) for r in pairs for k in kinds[:1])
    print(f"calibration: {len(pairs)} pairs, {int(y.sum())} same, {int(scored.sum())} reach the "
          f"model; units per source ({kinds[0]}): {dict(sorted(n_units.items()))}")

    passage = np.array([r.passage for r in pairs])
    base = out_of_fold(x, y, scored, fold)

    def report(name: str, design: np.ndarray) -> None:
        oof = out_of_fold(design, y, scored, fold)
        row = "  ".join(f"P@R{r:.1f} {precision_at(oof, y, r):.3f}" for r in RECALLS)
        row += f"  R@P0.95 {recall_at(oof, y, 0.95):.3f}  R@P0.98 {recall_at(oof, y, 0.98):.3f}"
        lo, hi = bootstrap_gain(base, oof, y, passage, 0.5)
        print(f"{name:42s} {row}  gain@R0.5 90% [{lo:+.3f}, {hi:+.3f}]")

    report("shipped features (baseline)", x)
    for k in kinds:
        ev = np.array([evidence(r.a, r.b, units[(r.passage, k)], vec) for r in pairs])
        same, diff = ev[y == 1], ev[(y == 0) & scored]
        print(f"[{k}] mean of each signal, same / different pairs reaching the model:")
        for j, name in enumerate(EVIDENCE):
            print(f"    {name:22s} {same[:, j].mean():.3f} / {diff[:, j].mean():.3f}")
        for j, name in enumerate(EVIDENCE):
            report(f"  + {name} ({k})", np.hstack([x, ev[:, j : j + 1]]))
        report(f"  + all evidence ({k})", np.hstack([x, ev]))


if __name__ == "__main__":
    main()
