"""Document analysis: type, language, topics and summary on documents; a topic index table.

Revision ID: 0010
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("documents", sa.Column("doc_type", sa.String(40), nullable=True))
    op.add_column("documents", sa.Column("language", sa.String(16), nullable=True))
    op.add_column("documents", sa.Column("topics", sa.JSON(), nullable=False,
                                         server_default="[]"))
    op.add_column("documents", sa.Column("summary", sa.Text(), nullable=True))
    op.add_column("documents", sa.Column("analysis", sa.JSON(), nullable=True))
    op.create_index("ix_documents_collection_type", "documents", ["collection_id", "doc_type"])
    op.create_index("ix_documents_collection_language", "documents",
                    ["collection_id", "language"])
    op.create_table(
        "document_topics",
        sa.Column("topic", sa.String(100), primary_key=True),
        sa.Column("document_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  sa.ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True),
    )
    op.create_index("ix_document_topics_document_id", "document_topics", ["document_id"])


def downgrade() -> None:
    op.drop_index("ix_document_topics_document_id", table_name="document_topics")
    op.drop_table("document_topics")
    op.drop_index("ix_documents_collection_language", table_name="documents")
    op.drop_index("ix_documents_collection_type", table_name="documents")
    with op.batch_alter_table("documents") as batch:
        for column in ("analysis", "summary", "topics", "language", "doc_type"):
            batch.drop_column(column)
