"""The document table's queries on SQLite read index entries, not rows (migration 0020): the
collection counts, the tag, status and type filter values, and a search's count. Checked on the
query plans SQLite chooses for the statements browse.py sends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from metis_rag.store import browse
from metis_rag.store.db import migrate


async def test_document_table_queries_use_covering_indexes(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'metis.db'}")
    await migrate(engine)
    sent: list[tuple[str, Any]] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def keep(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append((statement, params))

    sessions = async_sessionmaker(engine)
    async with sessions() as session:
        await session.execute(text(
            "INSERT INTO collections (tenant, name, version, created_at, updated_at) "
            "VALUES ('default', 'big', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        cid = (await session.execute(text("SELECT id FROM collections"))).scalar_one()
        await session.commit()
        sent.clear()
        await browse.collections_with_counts(session, "default")
        counts = len(sent)
        await browse.facets(session, "default", cid)
        facets = sent[counts:]
        await browse.search_documents(session, "default", browse.DocumentQuery(
            collection_id=cid, search="report"), limit=25, offset=0)
        search_page, search_count = sent[-2:]

        conn = await session.connection()

        async def explain(stmt: tuple[str, Any]) -> str:
            rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + stmt[0], stmt[1])
            return " | ".join(str(r[3]) for r in rows)

        assert "COVERING INDEX ix_documents_collection_counts" in await explain(sent[0])
        statuses, types = facets[2], facets[3]
        assert "status" in statuses[0] and "mime" in types[0]
        assert "COVERING INDEX ix_documents_collection_counts" in await explain(statuses)
        assert "COVERING INDEX ix_documents_collection_mime" in await explain(types)
        assert "COVERING INDEX ix_document_tags_collection_tag" in await explain(facets[0])
        assert "JOIN" not in facets[0][0]
        # a search compares filename and title as the index holds them (no lower() on SQLite)
        assert "lower(" not in search_count[0]
        assert "COVERING INDEX ix_documents_collection_created" in await explain(search_count)
        assert "INDEX ix_documents_collection_created" in await explain(search_page)
    await engine.dispose()
