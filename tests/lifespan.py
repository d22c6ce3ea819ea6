"""How tests start and stop an app in process: one place for the bounds.

asgi-lifespan's defaults (5 s each way) are shorter than a loaded CI machine needs: startup
loads the embedding model, and shutdown waits for running tasks to hand over, the task
writer's last flush and the lease release on a database another server may be writing
(SQLite's busy timeout). A bound exceeded fails the test with a bare TimeoutError.
"""

from __future__ import annotations

from typing import Any

from asgi_lifespan import LifespanManager

STARTUP_TIMEOUT_S = 120
SHUTDOWN_TIMEOUT_S = 60


def lifespan(app: Any) -> LifespanManager:
    return LifespanManager(app, startup_timeout=STARTUP_TIMEOUT_S,
                           shutdown_timeout=SHUTDOWN_TIMEOUT_S)
