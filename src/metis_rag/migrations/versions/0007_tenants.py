"""Tenants: a tenant on collections, conversations and tasks; random public document ids; API
keys stored as hashes; the audit log.

Collection names become unique per tenant. On SQLite that recreates `collections` (batch mode),
which `store.db.migrate` runs with foreign keys off so the copy cascades nothing.

Revision ID: 0007
Revises: 0004
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _tenant() -> sa.Column[str]:
    return sa.Column("tenant", sa.String(64), nullable=False, server_default="default")


# Names the inline UNIQUE of 0001 so batch mode (SQLite) can drop it.
_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("collections", naming_convention=_NAMES) as batch:
        batch.add_column(_tenant())
        batch.drop_constraint("uq_collections_name" if sqlite else "collections_name_key",
                              type_="unique")
        batch.create_unique_constraint("uq_collections_tenant_name", ["tenant", "name"])
    op.add_column("conversations", _tenant())
    op.add_column("tasks", _tenant())
    op.create_index("ix_tasks_tenant_created", "tasks", ["tenant", "created_at"])
    op.add_column("documents", sa.Column("public_id", sa.String(32), nullable=True))
    bind = op.get_bind()
    ids = [r[0] for r in bind.execute(sa.text("SELECT id FROM documents"))]
    for doc_id in ids:
        bind.execute(sa.text("UPDATE documents SET public_id = :p WHERE id = :i"),
                     {"p": secrets.token_urlsafe(16), "i": doc_id})
    op.create_index("ix_documents_public_id", "documents", ["public_id"], unique=True)
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("role", sa.String(10), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("target", sa.String(300), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_tenant_at", "audit_log", ["tenant", "at"])
    op.create_index("ix_audit_tenant_action_at", "audit_log", ["tenant", "action", "at"])


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("api_keys")
    op.drop_index("ix_documents_public_id", "documents")
    op.drop_column("documents", "public_id")
    op.drop_index("ix_tasks_tenant_created", "tasks")
    op.drop_column("tasks", "tenant")
    op.drop_column("conversations", "tenant")
    with op.batch_alter_table("collections") as batch:
        batch.drop_constraint("uq_collections_tenant_name", type_="unique")
        batch.create_unique_constraint("uq_collections_name", ["name"])
        batch.drop_column("tenant")
