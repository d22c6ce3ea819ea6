"""Tables of the tenancy layer: API keys (hashes only), the audit log and quota counters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ..store.models import Base, IdType, utcnow


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # public: list, revoke
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    tenant: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(10))
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditRecord(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_tenant_at", "tenant", "at"),
        Index("ix_audit_tenant_action_at", "tenant", "action", "at"),
        Index("ix_audit_trace_id", "trace_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    tenant: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(64))  # the key's id, never the key
    action: Mapped[str] = mapped_column(String(40))
    target: Mapped[str] = mapped_column(String(300))
    outcome: Mapped[str] = mapped_column(String(20))  # ok | refused | failed
    status: Mapped[int] = mapped_column(Integer)
    client: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The OpenTelemetry trace id when tracing is on, else the request id (X-Request-ID).
    trace_id: Mapped[str] = mapped_column(String(128), default="")


class QuotaCounter(Base):
    """A quota counter of `tenancy.counters.database` (when the counters are not in Redis)."""

    __tablename__ = "quota_counters"
    __table_args__ = (Index("ix_quota_counters_expires_at", "expires_at"),)

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[float] = mapped_column(Float)  # seconds since the epoch, servers' clock
