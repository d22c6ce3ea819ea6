"""`collections.analysis_version`: bumped when a document's analysis is stored, instead of the
collection's version, so answers that never read the analysis (plain questions without a
type/language/topic filter) stay cached while analyses arrive after an upload.

Revision ID: 0022
Revises: 0021
"""

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("collections", sa.Column("analysis_version", sa.Integer(), nullable=False,
                                           server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("collections") as batch:
        batch.drop_column("analysis_version")
