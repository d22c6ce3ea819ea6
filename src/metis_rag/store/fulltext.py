"""Full-text search over chunk text: FTS5's BM25 on SQLite, `ts_rank_cd` on PostgreSQL, each
query cut to its most selective terms."""

from __future__ import annotations

import re

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Chunk

_WORD_RE = re.compile(r"[^\W_]+", re.UNICODE)
_STOP = frozenset(
    "a an and are as at be but by can do does for from has have how i if in is it its me my "
    "no not of on or our so than that the their them then there these they this to was we "
    "were what when where which who why will with would you your".split()
)


def fulltext_terms(query: str) -> list[str]:
    words = [w.lower() for w in _WORD_RE.findall(query)]
    return list(dict.fromkeys(w for w in words if w not in _STOP and len(w) > 1))[:32]


# BM25 cost grows with the number of matching chunks, and a common word matches a large share
# of them while adding little to the ranking (low IDF). Queries keep their most selective terms.
_MAX_TERMS = 6
_MAX_DF_SHARE = 0.05


def _most_selective(share: dict[str, float]) -> list[str]:
    present = sorted(share, key=share.__getitem__)
    rare = [t for t in present if share[t] <= _MAX_DF_SHARE][:_MAX_TERMS]
    return rare or present[:2]


async def _selective_terms(session: AsyncSession, terms: list[str]) -> list[str]:
    marks = ", ".join(f":t{i}" for i in range(len(terms)))
    params = {f"t{i}": t for i, t in enumerate(terms)}
    rows = await session.execute(
        text(f"SELECT term, doc FROM chunks_vocab WHERE term IN ({marks})"), params
    )
    df = {r[0]: int(r[1]) for r in rows}
    if not df:
        return []
    total = (await session.execute(text("SELECT count(*) FROM chunks_fts_docsize"))).scalar_one()
    return _most_selective({t: n / max(total, 1) for t, n in df.items()})


# The share of chunks holding a lexeme, from the statistics ANALYZE keeps on `chunks.tsv` (its
# most common elements); a lexeme missing there is rare. No stats yet: all lexemes count as rare,
# which only costs speed.
_PG_LEXEME_SHARE = text(
    "WITH s AS (SELECT most_common_elems::text::text[] AS e, most_common_elem_freqs AS f "
    "FROM pg_stats WHERE schemaname = current_schema() AND tablename = 'chunks' "
    "AND attname = 'tsv') "
    "SELECT DISTINCT l, coalesce((SELECT s.f[array_position(s.e, l)] FROM s), 0) "
    "FROM unnest(CAST(:terms AS text[])) AS t, "
    "unnest(tsvector_to_array(to_tsvector('english', t))) AS l"
)
# Cover density ranking over the stored tsvector (migration 0004), normalised by 1 + log(length)
# like BM25's length term.
_PG_FULLTEXT = text(
    "SELECT id, ts_rank_cd(tsv, q, 1) AS s FROM chunks, to_tsquery('simple', :q) AS q "
    "WHERE collection_id = :c AND tsv @@ q ORDER BY s DESC, id LIMIT :n"
)


async def _fulltext_postgres(
    session: AsyncSession, collection_id: int, terms: list[str], limit: int
) -> list[tuple[int, float]]:
    share = {r[0]: float(r[1]) for r in await session.execute(_PG_LEXEME_SHARE, {"terms": terms})}
    lexemes = _most_selective(share)  # English stop words have no lexeme and drop out here
    if not lexemes:
        return []
    rows = await session.execute(
        _PG_FULLTEXT, {"q": " | ".join(lexemes), "c": collection_id, "n": limit}
    )
    return [(r[0], float(r[1])) for r in rows]


async def fulltext_search(
    session: AsyncSession, collection_id: int, query: str, limit: int
) -> list[tuple[int, float]]:
    """BM25 (SQLite FTS5) or ts_rank_cd (PostgreSQL) over chunk text; any query word may match."""
    terms = fulltext_terms(query)
    if not terms:
        return []
    if session.get_bind().dialect.name != "sqlite":
        return await _fulltext_postgres(session, collection_id, terms, limit)
    terms = await _selective_terms(session, terms)
    if not terms:
        return []
    match = " OR ".join(f'"{t}"' for t in terms)
    # Rank in FTS alone (a join per match would double the cost), then keep this
    # collection's ids: over-fetch so that other collections' hits do not crowd it out.
    sql = text(
        "SELECT rowid, bm25(chunks_fts) AS s FROM chunks_fts "
        "WHERE chunks_fts MATCH :q ORDER BY s LIMIT :n"
    )
    hits = [(r[0], -float(r[1])) for r in await session.execute(sql, {"q": match, "n": limit * 3})]
    if not hits:
        return []
    mine = await session.execute(
        select(Chunk.id).where(
            Chunk.id.in_([h[0] for h in hits]), Chunk.collection_id == collection_id
        )
    )
    keep = {r[0] for r in mine}
    return [h for h in hits if h[0] in keep][:limit]
