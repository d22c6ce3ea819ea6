"""Quota counters shared by every server when they are kept in the database
(METIS_AUTH__QUOTA_STORE=database, or auto without Redis); the trace id of audit records.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quota_counters",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_quota_counters_expires_at", "quota_counters", ["expires_at"])
    op.add_column("audit_log",
                  sa.Column("trace_id", sa.String(128), nullable=False, server_default=""))
    op.create_index("ix_audit_trace_id", "audit_log", ["trace_id"])


def downgrade() -> None:
    op.drop_index("ix_audit_trace_id", table_name="audit_log")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("trace_id")
    op.drop_index("ix_quota_counters_expires_at", table_name="quota_counters")
    op.drop_table("quota_counters")
