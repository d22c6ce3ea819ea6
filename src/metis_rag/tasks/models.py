"""Task tables: tasks, their dependency edges, upload payloads, and the processes that run them.

The `tasks` table is the source of truth for status and progress, whichever engine runs the
work. Each index below serves one query path (named beside it); migration 0002 creates them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from ..store.models import Base
from .ids import ID_MAX


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        # GET /api/tasks?status=..., stats counts, recovery and re-dispatch scans
        Index("ix_tasks_status_created", "status", "created_at"),
        # GET /api/tasks?type=...[&status=...]
        Index("ix_tasks_type_status_created", "type", "status", "created_at"),
        # GET /api/tasks (newest first)
        Index("ix_tasks_created", "created_at"),
        # throughput and mean wait/run over the stats window
        Index("ix_tasks_finished", "finished_at"),
        # a process's own tasks: adoption after a crash, cancel requests, heartbeats
        Index("ix_tasks_owner_status", "owner", "status"),
        # GET /api/tasks of one tenant, newest first
        Index("ix_tasks_tenant_created", "tenant", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(ID_MAX), primary_key=True)  # see tasks.ids
    tenant: Mapped[str] = mapped_column(String(64), default="default")
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(100))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    priority: Mapped[int] = mapped_column(SmallInteger)  # 0 low .. 4 critical
    status: Mapped[str] = mapped_column(String(12))
    dependencies: Mapped[list[Any]] = mapped_column(JSON)
    start_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    timeout_s: Mapped[float] = mapped_column(Float)
    max_retries: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(String(500), nullable=True)
    result: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    owner: Mapped[str | None] = mapped_column(String(120), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    wait_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    run_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    cpu_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    peak_rss_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class TaskEdge(Base):
    """`task_id` waits for `depends_on`; indexed both ways so a finished task finds its dependants."""

    __tablename__ = "task_edges"

    task_id: Mapped[str] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    depends_on: Mapped[str] = mapped_column(String(ID_MAX), primary_key=True, index=True)


class TaskBlob(Base):
    """An upload's bytes, kept until its task completes, so a re-queued task can run again."""

    __tablename__ = "task_blobs"

    task_id: Mapped[str] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[bytes] = mapped_column(LargeBinary)


class TaskWorker(Base):
    """A process that owns tasks (embedded engine or Celery worker) and renews its lease."""

    __tablename__ = "task_workers"

    id: Mapped[str] = mapped_column(String(120), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    concurrency: Mapped[int] = mapped_column(Integer)
    running: Mapped[int] = mapped_column(Integer, default=0)
    resources: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    alerts: Mapped[list[Any]] = mapped_column(JSON, default=list)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
