"""Task ids scoped per tenant: stored as `<tenant>:<id>` (see `tasks.ids`), so the id columns
widen from 32 to 100 characters. SQLite does not enforce VARCHAR lengths: nothing to do there.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_COLUMNS = (("tasks", "id"), ("task_edges", "task_id"), ("task_edges", "depends_on"),
            ("task_blobs", "task_id"))


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for table, column in _COLUMNS:
        # varchar(32) -> varchar(100) is binary-compatible: no rewrite, foreign keys stay valid
        op.alter_column(table, column, type_=sa.String(100), existing_type=sa.String(32))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for table, column in _COLUMNS:
        op.alter_column(table, column, type_=sa.String(32), existing_type=sa.String(100))
