"""Processes the tests start: a throwaway redis-server they may kill, pause and restart, and
the free local port it listens on (the one `free_port`, shared with devtools.cluster)."""

from __future__ import annotations

import signal
import subprocess
import time

import redis

from metis_rag.devtools.cluster import free_port

__all__ = ["RedisServer", "free_port"]


class RedisServer:
    """A throwaway redis-server on its own port, nothing persisted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        with redis.Redis(port=self.port, socket_timeout=0.5) as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise RuntimeError(f"redis-server did not start on {self.port}") from None
                    time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients, as in a crash."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1)
