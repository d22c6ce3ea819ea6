"""pgvector on PostgreSQL: `chunks.vec vector(dim)` and its HNSW index (vector_cosine_ops).

Applied only on PostgreSQL, and only where the `vector` extension is available; elsewhere it
changes nothing (`METIS_VECTOR_STORE=auto` then keeps the embedded HNSW index). Existing chunks
get their `vec` from their stored embedding at the next start (vector store reconciliation).
The dimension and HNSW parameters come from `metis_rag.store.db.migrate`.

Revision ID: 0003
Revises: 0001
"""

import logging

from alembic import op

from metis_rag.store import pgvector

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("metis")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    if not pgvector.vector_available(bind):
        log.warning("PostgreSQL has no pgvector extension: vectors stay in the embedded index")
        return
    config = op.get_context().config
    options = config.attributes.get("pgvector", {}) if config is not None else {}
    for statement in pgvector.schema_statements(
        options.get("dim", 384), options.get("m", 16), options.get("ef_construction", 200)
    ):
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP INDEX IF EXISTS {pgvector.INDEX}")
    op.execute(f"ALTER TABLE chunks DROP COLUMN IF EXISTS {pgvector.COLUMN}")
