"""A light re-ranking of the fused candidates by query-term evidence (no model, well under 1 ms).

The fused score gets a bonus for the share of the query's content words a chunk holds and for
query words in its document's file name (an entity lookup names the page it wants). Words
match on their first six letters, a poor man's stemmer. Measured by bench_retrieval.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..store.repo import ChunkRow, fulltext_terms

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def _stems(text: str) -> set[str]:
    return {w[:6] for w in _WORD.findall(text.lower()) if len(w) > 1}


def term_rerank(query: str, scores: Mapping[int, float], rows: Mapping[int, ChunkRow],
                coverage_weight: float, name_weight: float) -> dict[int, float]:
    """`scores` plus coverage_weight * (share of query words in the chunk) plus
    name_weight * (share of query words in the document's file name)."""
    terms = {t[:6] for t in fulltext_terms(query)}
    if not terms:
        return dict(scores)
    out = {}
    for i, score in scores.items():
        row = rows[i]
        coverage = len(terms & _stems(row.text)) / len(terms)
        named = len(terms & _stems(row.filename)) / len(terms)
        out[i] = score + coverage_weight * coverage + name_weight * named
    return out
