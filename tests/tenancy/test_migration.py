"""Migration 0007 on a database that already holds documents: nothing is lost (on SQLite the
`collections` table is recreated), every document gets a unique random public id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection

from metis_rag.config import Settings
from metis_rag.store.db import MIGRATIONS_DIR, create_engine, migrate

pytestmark = pytest.mark.databases


def _upgrade_to(connection: Connection, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    cfg.attributes["pgvector"] = {"dim": 4, "m": 16, "ef_construction": 64}
    command.upgrade(cfg, revision)


async def _rows(conn: Any, sql: str) -> list[Any]:
    return list((await conn.execute(text(sql))).all())


async def test_existing_data_survives_and_gets_public_ids(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    engine = create_engine(settings)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_to, "0004")
            now = "2026-01-01 00:00:00"
            await conn.execute(text(
                "INSERT INTO collections (id, name, version, created_at, updated_at) "
                f"VALUES (1, 'docs', 3, '{now}', '{now}'), (2, 'other', 1, '{now}', '{now}')"))
            for i in range(1, 6):
                await conn.execute(text(
                    "INSERT INTO documents (id, collection_id, filename, folder, content_hash, "
                    "mime, size_bytes, tags, status, chunk_count, created_at, updated_at) VALUES "
                    f"({i}, {1 + i % 2}, 'f{i}.txt', '', 'h{i}', 'text/plain', 10, '[]', "
                    f"'ready', 0, '{now}', '{now}')"))
            await conn.execute(text(
                "INSERT INTO conversations (id, collection_id, title, created_at, updated_at) "
                f"VALUES ('c1', 1, 't', '{now}', '{now}')"))
        await migrate(engine, vector_dim=4)
        async with engine.connect() as conn:
            assert await _rows(conn, "SELECT id, tenant, name, version FROM collections "
                                     "ORDER BY id") == [(1, "default", "docs", 3),
                                                        (2, "default", "other", 1)]
            docs = await _rows(conn, "SELECT id, collection_id, public_id FROM documents")
            assert len(docs) == 5
            public = [d[2] for d in docs]
            assert len(set(public)) == 5 and all(len(p) == 22 for p in public)
            assert await _rows(conn, "SELECT tenant FROM conversations") == [("default",)]
            # Names are unique per tenant now, not across tenants.
            await conn.execute(text(
                "INSERT INTO collections (id, tenant, name, version, created_at, updated_at) "
                "VALUES (10, 'acme', 'docs', 1, '2026-01-01', '2026-01-01')"))
            with pytest.raises(Exception, match="(?i)unique"):
                await conn.execute(text(
                    "INSERT INTO collections (id, tenant, name, version, created_at, updated_at) "
                    "VALUES (11, 'acme', 'docs', 1, '2026-01-01', '2026-01-01')"))
            if conn.dialect.name == "sqlite":  # the batch copy left foreign keys on
                assert (await _rows(conn, "PRAGMA foreign_keys")) == [(1,)]
    finally:
        await engine.dispose()
