"""PostgreSQL: the cache backend `postgres` (`cache/postgres.py`): entries and the semantic
level's lists in the database the servers share. Applied only on PostgreSQL.

Revision ID: 0014
Revises: 0008
"""

from alembic import op

revision = "0014"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE TABLE cache_entries (key text PRIMARY KEY, value bytea NOT NULL, "
        "expires_at double precision NOT NULL)"
    )
    op.execute("CREATE INDEX ix_cache_entries_expires_at ON cache_entries (expires_at)")
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
    op.execute("DROP TABLE IF EXISTS cache_entries")
