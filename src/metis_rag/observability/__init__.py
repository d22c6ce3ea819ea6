"""Monitoring: Prometheus metrics, structured logs with request ids, slow-query detection,
response compression and the data behind the /dashboard page."""

from .metrics import Metrics, TaskProvider, TaskSnapshot

__all__ = ["Metrics", "TaskProvider", "TaskSnapshot"]
