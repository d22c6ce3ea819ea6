"""PostgreSQL with pgvector: `cache_list_items.vec`, each semantic-list item's question vector,
so the `postgres` cache backend finds a list's nearest questions in the database instead of
every server reading the whole list. Elsewhere it changes nothing (servers mirror the lists).

The column has no fixed dimension (lists of any embedder share the table); a search compares
only vectors of the question's dimension. No index: a search ranks one list's rows, found by
the primary key (key, pos).

Revision ID: 0021
Revises: 0020
"""

from alembic import op

from metis_rag.store import pgvector

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql" or not pgvector.vector_available(bind):
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute("ALTER TABLE cache_list_items ADD COLUMN IF NOT EXISTS vec vector")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE cache_list_items DROP COLUMN IF EXISTS vec")
