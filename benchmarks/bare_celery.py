"""The bare engine for bench_tasks.py: plain Celery with Metis's Celery settings and a no-op
task that only records when it started (RPUSH to Redis), run by `celery -A bare_celery worker`."""

from __future__ import annotations

import os
import time

import redis

from metis_rag.config import TaskSettings
from metis_rag.tasks.celery import make_celery

settings = TaskSettings(queue=os.environ.get("BARE_QUEUE", "bare"),
                        broker_url=os.environ.get("BARE_BROKER", TaskSettings().broker_url))
app = make_celery(settings)
_redis = redis.Redis.from_url(os.environ.get("BARE_REDIS", "redis://127.0.0.1:6379/0"))
KEY = os.environ.get("BARE_KEY", "bare:starts")


@app.task(name="bare.noop")
def noop(sent: float) -> None:
    _redis.rpush(KEY, f"{sent} {time.time()}")
