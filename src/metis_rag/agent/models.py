"""Tables of the agent's process log: one row per agent query, one per thing it did."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..store.models import Base, IdType, UTCDateTime, utcnow


class AgentQuery(Base):
    __tablename__ = "agent_queries"
    __table_args__ = (Index("ix_agent_queries_tenant_created", "tenant", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # public, random
    tenant: Mapped[str] = mapped_column(String(64))
    collection: Mapped[str] = mapped_column(String(200))
    conversation_id: Mapped[str] = mapped_column(String(32), default="")
    question: Mapped[str] = mapped_column(Text)
    analysis: Mapped[str] = mapped_column(String(20))  # simple | compound | comparison ...
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    answer: Mapped[str] = mapped_column(Text, default="")
    scores: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    rounds: Mapped[int] = mapped_column(Integer, default=0)
    total_ms: Mapped[float] = mapped_column(Float, default=0.0)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AgentEvent(Base):
    __tablename__ = "agent_events"
    __table_args__ = (Index("ix_agent_events_query", "query_id", "seq"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    query_id: Mapped[str] = mapped_column(ForeignKey("agent_queries.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    # analysis | plan | step | tool_call | synthesis | evaluation | refinement
    kind: Mapped[str] = mapped_column(String(20))
    step_id: Mapped[str] = mapped_column(String(20), default="")
    name: Mapped[str] = mapped_column(String(100), default="")
    status: Mapped[str] = mapped_column(String(20), default="ok")
    input: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    output: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_ms: Mapped[float] = mapped_column(Float, default=0.0)
    elapsed_ms: Mapped[float] = mapped_column(Float, default=0.0)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    cache_level: Mapped[str | None] = mapped_column(String(20), nullable=True)
