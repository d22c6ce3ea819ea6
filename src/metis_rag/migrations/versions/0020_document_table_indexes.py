"""Indexes that let the web page's document table, its filters and the collection list read
only index entries on a collection of 10,000 documents (bench_web.py):

- SQLite: the newest-first index also holds filename and title, so a search (LIKE '%...%',
  which no b-tree can seek) checks them in the index instead of reading every row. Not on
  PostgreSQL, where a long non-ASCII title could pass a b-tree entry's size limit (and where
  the search is an ILIKE that reads rows either way);
- (collection_id, status, chunk_count, size_bytes): the collection list's counts and the status
  filter's values; (collection_id, mime): the type filter's values;
- document_tags gets its document's collection_id (filled in here, written with the tags) and
  an index (collection_id, tag): the tag filter's values are counted from index entries
  instead of joining every tag row to its document.

Revision ID: 0020
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0009"
branch_labels = None
depends_on = None


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    if _sqlite():
        op.drop_index("ix_documents_collection_created", table_name="documents")
        op.create_index("ix_documents_collection_created", "documents",
                        ["collection_id", "created_at", "id", "filename", "title"])
    op.create_index("ix_documents_collection_counts", "documents",
                    ["collection_id", "status", "chunk_count", "size_bytes"])
    op.create_index("ix_documents_collection_mime", "documents", ["collection_id", "mime"])
    op.add_column("document_tags", sa.Column("collection_id", sa.BigInteger().with_variant(
        sa.Integer(), "sqlite"), nullable=True))
    op.execute("UPDATE document_tags SET collection_id = (SELECT documents.collection_id "
               "FROM documents WHERE documents.id = document_tags.document_id)")
    op.create_index("ix_document_tags_collection_tag", "document_tags", ["collection_id", "tag"])


def downgrade() -> None:
    op.drop_index("ix_document_tags_collection_tag", table_name="document_tags")
    with op.batch_alter_table("document_tags") as batch:
        batch.drop_column("collection_id")
    op.drop_index("ix_documents_collection_mime", table_name="documents")
    op.drop_index("ix_documents_collection_counts", table_name="documents")
    if _sqlite():
        op.drop_index("ix_documents_collection_created", table_name="documents")
        op.create_index("ix_documents_collection_created", "documents",
                        ["collection_id", "created_at", "id"])
