"""The agent's process log: `agent_queries` (one per agent question, tenant-scoped) and
`agent_events` (every analysis, plan, step, tool call, synthesis, evaluation and refinement).

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "agent_queries",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("collection", sa.String(200), nullable=False),
        sa.Column("conversation_id", sa.String(32), nullable=False),
        sa.Column("question", sa.Text, nullable=False),
        sa.Column("analysis", sa.String(20), nullable=False),
        sa.Column("plan", sa.JSON, nullable=False),
        sa.Column("answer", sa.Text, nullable=False),
        sa.Column("scores", sa.JSON, nullable=False),
        sa.Column("rounds", sa.Integer, nullable=False),
        sa.Column("total_ms", sa.Float, nullable=False),
        sa.Column("tokens", sa.Integer, nullable=False),
        sa.Column("cost", sa.Float, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_agent_queries_tenant_created", "agent_queries", ["tenant", "created_at"])
    op.create_table(
        "agent_events",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("query_id", sa.String(32),
                  sa.ForeignKey("agent_queries.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("step_id", sa.String(20), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("input", sa.JSON, nullable=False),
        sa.Column("output", sa.JSON, nullable=False),
        sa.Column("started_ms", sa.Float, nullable=False),
        sa.Column("elapsed_ms", sa.Float, nullable=False),
        sa.Column("tokens", sa.Integer, nullable=False),
        sa.Column("cost", sa.Float, nullable=False),
        sa.Column("cache_level", sa.String(20)),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_agent_events_query", "agent_events", ["query_id", "seq"])


def downgrade() -> None:
    op.drop_table("agent_events")
    op.drop_table("agent_queries")
