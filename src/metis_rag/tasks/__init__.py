"""Background tasks: one `TaskBackend` interface, an embedded engine and a Celery backend."""

from __future__ import annotations

from typing import Literal

from sqlalchemy.ext.asyncio import AsyncEngine

from ..config import Settings
from .base import TaskBackend
from .runner import HandlerRegistry

Role = Literal["server", "client", "worker"]


def build_backend(
    settings: Settings, engine: AsyncEngine, registry: HandlerRegistry, role: Role
) -> TaskBackend:
    """server: runs tasks (embedded) or follows workers' writes (celery); client: submits and
    reads only; worker: the backend a Celery worker's handlers submit follow-up tasks to."""
    if settings.tasks.backend == "celery":
        from .celery import CeleryBackend

        return CeleryBackend(engine, settings.tasks, registry, follow_index=role == "server")
    from .embedded import EmbeddedBackend

    return EmbeddedBackend(engine, settings.tasks, registry, data_dir=settings.data_dir,
                           run=role == "server")
