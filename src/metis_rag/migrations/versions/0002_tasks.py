"""Background tasks: tasks, dependency edges, upload payloads and task-running processes.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("dependencies", sa.JSON, nullable=False),
        sa.Column("start_at", TS),
        sa.Column("timeout_s", sa.Float, nullable=False),
        sa.Column("max_retries", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("message", sa.String(500)),
        sa.Column("result", sa.JSON),
        sa.Column("error", sa.JSON),
        sa.Column("owner", sa.String(120)),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.Column("wait_s", sa.Float),
        sa.Column("run_s", sa.Float),
        sa.Column("cpu_s", sa.Float),
        sa.Column("peak_rss_bytes", sa.BigInteger),
    )
    op.create_index("ix_tasks_status_created", "tasks", ["status", "created_at"])
    op.create_index("ix_tasks_type_status_created", "tasks", ["type", "status", "created_at"])
    op.create_index("ix_tasks_created", "tasks", ["created_at"])
    op.create_index("ix_tasks_finished", "tasks", ["finished_at"])
    op.create_index("ix_tasks_owner_status", "tasks", ["owner", "status"])
    op.create_table(
        "task_edges",
        sa.Column("task_id", sa.String(32), sa.ForeignKey("tasks.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("depends_on", sa.String(32), primary_key=True),
    )
    op.create_index("ix_task_edges_depends_on", "task_edges", ["depends_on"])
    op.create_table(
        "task_blobs",
        sa.Column("task_id", sa.String(32), sa.ForeignKey("tasks.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "task_workers",
        sa.Column("id", sa.String(120), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("hostname", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("heartbeat_at", TS, nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("running", sa.Integer, nullable=False),
        sa.Column("resources", sa.JSON, nullable=False),
        sa.Column("alerts", sa.JSON, nullable=False),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_task_workers_heartbeat_at", "task_workers", ["heartbeat_at"])


def downgrade() -> None:
    for table in ("task_workers", "task_blobs", "task_edges", "tasks"):
        op.drop_table(table)
