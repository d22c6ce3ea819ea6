"""What a task is, as callers see it: priorities, statuses, a submission and the JSON view."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..schemas import NO_NUL, NoNul


class Priority(enum.IntEnum):
    low = 0
    normal = 1
    high = 2
    urgent = 3
    critical = 4


StatusName = Literal["pending", "scheduled", "waiting", "running", "completed", "failed", "cancelled"]
STATUSES: tuple[StatusName, ...] = (
    "pending", "scheduled", "waiting", "running", "completed", "failed", "cancelled"
)
FINISHED: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
QUEUED: frozenset[str] = frozenset({"pending", "scheduled", "waiting"})


@dataclass(slots=True)
class TaskSpec:
    """One task to submit. `blob` (an upload's bytes) is stored with the task, not in `params`."""

    type: str
    params: dict[str, Any] = field(default_factory=dict)
    id: str | None = None  # chosen by the caller, so a batch can name its own dependencies
    name: str = ""
    priority: Priority = Priority.normal
    depends_on: list[str] = field(default_factory=list)
    start_at: datetime | None = None
    timeout_s: float | None = None
    max_retries: int | None = None
    blob: bytes | None = None
    tenant: str = "default"


class TaskError(BaseModel):
    code: str
    message: str


class TaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    tenant: str = "default"
    name: str
    type: str
    params: dict[str, Any]
    priority: Literal["low", "normal", "high", "urgent", "critical"]
    status: StatusName
    dependencies: list[str]
    start_at: datetime | None
    timeout_s: float
    max_retries: int
    attempts: int
    progress: float = Field(description="0-100.")
    message: str | None
    result: Any | None
    error: TaskError | None
    owner: str | None = Field(description="The process running (or holding) the task.")
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    wait_s: float | None = Field(description="From creation (or scheduled start) to start.")
    run_s: float | None = Field(description="Execution time of the last attempt.")
    cpu_s: float | None = Field(description="CPU seconds of the process while it ran.")
    peak_rss_bytes: int | None


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,32}$",
                           description="Optional: lets tasks of one batch depend on each other.")
    # No NUL in the text columns (PostgreSQL text cannot hold one): a 422, not a failed batch of
    # everyone's submissions. In `params` (JSON) a NUL is kept, escaped.
    type: str = Field(min_length=1, max_length=100, pattern=NO_NUL,
                      examples=["reindex_collection"])
    params: dict[str, Any] = Field(default_factory=dict)
    name: str = Field("", max_length=200, pattern=NO_NUL)
    priority: Literal["low", "normal", "high", "urgent", "critical"] = "normal"
    depends_on: list[NoNul] = Field(default_factory=list, max_length=1000)
    start_at: datetime | None = Field(None, description="Do not start before (ISO 8601).")
    timeout_s: float | None = Field(None, gt=0, le=7 * 86400)
    max_retries: int | None = Field(None, ge=0, le=100)

    @field_validator("params")
    @classmethod
    def _storable(cls, params: dict[str, Any]) -> dict[str, Any]:
        # Stored as JSON by orjson, which refuses integers beyond 64 bits and nesting deeper
        # than 254: refused here (422), not in the group commit it shares with other
        # submissions (a 500, and their failure with it).
        try:
            orjson.dumps(params)
        except orjson.JSONEncodeError as exc:
            raise ValueError(f"params cannot be stored as JSON: {exc}") from None
        return params

    def to_spec(self, tenant: str = "default") -> TaskSpec:
        return TaskSpec(
            tenant=tenant, type=self.type, params=self.params, id=self.id, name=self.name,
            priority=Priority[self.priority],
            depends_on=list(self.depends_on), start_at=self.start_at, timeout_s=self.timeout_s,
            max_retries=self.max_retries,
        )


class TaskPage(BaseModel):
    items: list[TaskOut]
    total: int
    limit: int
    offset: int


class Alert(BaseModel):
    at: datetime
    metric: str
    value: float
    threshold: float
    message: str
    source: str = ""


class TaskStats(BaseModel):
    backend: str
    counts: dict[str, int] = Field(description="Tasks per status.")
    queue_depth: int = Field(description="Pending tasks ready to run now.")
    throughput_per_s: float = Field(description="Tasks finished per second over the window.")
    window_s: float
    mean_wait_s: float | None
    mean_run_s: float | None
    concurrency: int = Field(description="Current concurrency limit (after load shedding).")
    max_concurrency: int
    running: int
    resources: dict[str, Any] = Field(description="Latest CPU, memory, disk and I/O wait sample.")
    alerts: list[Alert] = Field(description="Recent resource alerts, newest last.")
    workers: list[dict[str, Any]] = Field(default_factory=list)
