"""PostgreSQL: the semantic cache's shared lists (`cache/pglist.py`) when the database is
PostgreSQL and the cache is not Redis, so servers on one database share semantic hits.
Applied only on PostgreSQL (SQLite servers share nothing but a file).

Revision ID: 0014
Revises: 0008
"""

from alembic import op

revision = "0014"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE TABLE cache_lists (key text PRIMARY KEY, length integer NOT NULL, "
        "expires_at double precision)"
    )
    op.execute("CREATE INDEX ix_cache_lists_expires_at ON cache_lists (expires_at)")
    op.execute(
        "CREATE TABLE cache_list_items (key text NOT NULL REFERENCES cache_lists(key) "
        "ON DELETE CASCADE, pos integer NOT NULL, value bytea NOT NULL, PRIMARY KEY (key, pos))"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TABLE IF EXISTS cache_list_items")
    op.execute("DROP TABLE IF EXISTS cache_lists")
