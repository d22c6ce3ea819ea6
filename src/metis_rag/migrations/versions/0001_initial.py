"""Initial schema: collections, documents, tags, chunks (+ full-text index), conversations.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "collections",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "documents",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column(
            "collection_id", Id, sa.ForeignKey("collections.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("folder", sa.String(500), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("mime", sa.String(120), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("title", sa.String(500)),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("chunk_count", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("collection_id", "content_hash", name="uq_documents_collection_hash"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_documents_collection_path", "documents", ["collection_id", "folder", "filename"]
    )
    op.create_index(
        "ix_documents_collection_created", "documents", ["collection_id", "created_at", "id"]
    )
    op.create_index("ix_documents_status", "documents", ["status"])
    op.create_table(
        "document_tags",
        sa.Column("tag", sa.String(100), primary_key=True),
        sa.Column(
            "document_id",
            Id,
            sa.ForeignKey("documents.id", ondelete="CASCADE"),
            primary_key=True,
        ),
    )
    op.create_index("ix_document_tags_document_id", "document_tags", ["document_id"])
    op.create_table(
        "chunks",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column(
            "document_id", Id, sa.ForeignKey("documents.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("collection_id", Id, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("page", sa.Integer),
        sa.Column("section", sa.String(500)),
        sa.Column("token_count", sa.Integer, nullable=False),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
        # Ids are never reused (SQLite would hand a deleted max id out again): caches, the
        # vector index and clients hold chunk ids, and one must never name a different chunk.
        sqlite_autoincrement=True,
    )
    op.create_index("ix_chunks_document_position", "chunks", ["document_id", "position"])
    op.create_index("ix_chunks_collection", "chunks", ["collection_id"])
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "collection_id", Id, sa.ForeignKey("collections.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "messages",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column(
            "conversation_id",
            sa.String(32),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("citations", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_messages_conversation", "messages", ["conversation_id", "id"])

    if op.get_bind().dialect.name == "sqlite":
        # External-content FTS5 table kept in step with `chunks` by triggers, so a chunk and
        # its full-text entry are written (or rolled back) in the same transaction.
        op.execute(
            "CREATE VIRTUAL TABLE chunks_fts USING fts5("
            "text, content='chunks', content_rowid='id', tokenize='unicode61 remove_diacritics 2')"
        )
        # Per-term document frequencies, so queries can keep only their selective terms.
        op.execute("CREATE VIRTUAL TABLE chunks_vocab USING fts5vocab(chunks_fts, 'row')")
        op.execute(
            "CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN "
            "INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text); END"
        )
        op.execute(
            "CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN "
            "INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES('delete', old.id, old.text); END"
        )
        op.execute(
            "CREATE TRIGGER chunks_au AFTER UPDATE ON chunks BEGIN "
            "INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES('delete', old.id, old.text); "
            "INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text); END"
        )
    else:
        op.execute(
            "CREATE INDEX ix_chunks_fts ON chunks USING GIN (to_tsvector('english', text))"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS chunks_vocab")
        op.execute("DROP TABLE IF EXISTS chunks_fts")
    for table in ("messages", "conversations", "chunks", "document_tags", "documents"):
        op.drop_table(table)
    op.drop_table("collections")
