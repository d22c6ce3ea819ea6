"""Several Metis servers for real, on one machine: for the replica tests and benchmarks.

`Cluster` starts N `metis serve` processes and M `metis worker` processes on one PostgreSQL
database with pgvector, one Redis cache tier and one RabbitMQ queue, and HAProxy in front of
the servers with `deploy/haproxy/haproxy.cfg` (its `bind` port and `server` lines replaced).
Every process is a child of this one, with its own data dir and log file under `root`;
`close()` stops them all. Needs Debian's `haproxy` (`apt-get install haproxy`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

REPO = Path(__file__).resolve().parents[3]
HAPROXY_CONFIG = REPO / "deploy" / "haproxy" / "haproxy.cfg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def haproxy_config(template: str, port: int, servers: list[int]) -> str:
    """The example config with its `bind` on `port` and one `server` line per server port."""
    kept = [line for line in template.splitlines() if not line.strip().startswith("server ")]
    out: list[str] = []
    for line in kept:
        if line.strip().startswith("bind "):
            line = re.sub(r"bind \S+", f"bind 127.0.0.1:{port}", line)
        out.append(line)
        if line.strip().startswith("default-server "):
            indent = line[: len(line) - len(line.lstrip())]
            out += [f"{indent}server metis{i + 1} 127.0.0.1:{p} check"
                    for i, p in enumerate(servers)]
    return "\n".join(out) + "\n"


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=REPO, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as a crash or an OOM kill."""
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 30) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, chars: int = 3000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- {self.name}\n{text[-chars:]}"


@dataclass
class Cluster:
    """N servers and M workers behind HAProxy. `url` is the balancer's; `server_url(i)` one's."""

    root: Path
    database_url: str
    models_dir: Path
    servers: int = 2
    workers: int = 1
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    env: dict[str, str] = field(default_factory=dict)
    name: str = field(default_factory=lambda: f"metis-cluster-{uuid.uuid4().hex[:8]}")
    server_procs: list[Process] = field(default_factory=list)
    worker_procs: list[Process] = field(default_factory=list)
    balancer: Process | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def server_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.server_procs[i].port}"

    def base_env(self, data_dir: Path) -> dict[str, str]:
        data_dir.mkdir(parents=True, exist_ok=True)
        link = data_dir / "models"
        if not link.exists():
            link.symlink_to(self.models_dir, target_is_directory=True)
        return {
            **os.environ, "METIS_DATA_DIR": str(data_dir),
            "METIS_DATABASE_URL": self.database_url, "METIS_VECTOR_STORE": "pgvector",
            "METIS_CACHE__BACKEND": "redis", "METIS_CACHE__REDIS_URL": self.redis_url,
            # Its own keys and channel: other clusters (other tests) may share the Redis.
            "METIS_CACHE__REDIS_KEY_PREFIX": f"{self.name}:",
            "METIS_TASKS__BACKEND": "celery", "METIS_TASKS__BROKER_URL": self.broker_url,
            "METIS_TASKS__QUEUE": self.name, "METIS_LOG_LEVEL": "warning",
            "METIS_OBSERVABILITY__ACCESS_LOG": "false",
            **self.env,
        }

    def start(self, timeout_s: float = 180) -> Cluster:
        if shutil.which("haproxy") is None:
            raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
        self.root.mkdir(parents=True, exist_ok=True)
        # The first server runs the migrations alone; then the others and the workers.
        self.add_server()
        self.wait_healthy(0, timeout_s)
        for _ in range(self.servers - 1):
            self.add_server()
        for _ in range(self.workers):
            self.add_worker()
        for i in range(len(self.server_procs)):
            self.wait_healthy(i, timeout_s)
        self.port = free_port()
        self._start_balancer()
        self.wait_balancer(timeout_s)
        return self

    def add_server(self) -> Process:
        i = len(self.server_procs)
        port = free_port()
        env = self.base_env(self.root / f"server{i}") | {"METIS_PORT": str(port)}
        p = Process(f"server{i}", [sys.executable, "-m", "metis_rag", "serve"], env,
                    self.root / f"server{i}.log", port)
        p.start()
        self.server_procs.append(p)
        return p

    def add_worker(self) -> Process:
        i = len(self.worker_procs)
        env = self.base_env(self.root / f"worker{i}")
        p = Process(f"worker{i}", [sys.executable, "-m", "metis_rag", "worker"], env,
                    self.root / f"worker{i}.log")
        p.start()
        self.worker_procs.append(p)
        return p

    def restart_server(self, i: int, timeout_s: float = 180) -> None:
        """Start server `i` again on its port (after `kill`); HAProxy's check takes it back."""
        p = self.server_procs[i]
        p.stop()
        p.start()
        self.wait_healthy(i, timeout_s)

    def rebalance(self, servers: list[int], timeout_s: float = 30) -> None:
        """Put only these servers (indexes) behind the balancer: HAProxy restarted on its port."""
        if self.balancer is not None:
            self.balancer.stop()
        self._start_balancer(servers)
        self.wait_balancer(timeout_s)

    def _start_balancer(self, servers: list[int] | None = None) -> None:
        config = self.root / "haproxy.cfg"
        chosen = range(len(self.server_procs)) if servers is None else servers
        ports = [p for p in (self.server_procs[i].port for i in chosen) if p is not None]
        config.write_text(haproxy_config(HAPROXY_CONFIG.read_text(), self.port, ports))
        # -db: stay in the foreground, a child of ours; -W: master-worker, no daemon.
        self.balancer = Process("haproxy", ["haproxy", "-W", "-db", "-f", str(config)],
                                dict(os.environ), self.root / "haproxy.log", self.port)
        self.balancer.start()

    def wait_healthy(self, i: int, timeout_s: float = 180) -> None:
        self._wait(self.server_url(i) + "/api/health", timeout_s, self.server_procs[i])

    def wait_balancer(self, timeout_s: float = 30) -> None:
        assert self.balancer is not None
        self._wait(self.url + "/api/health", timeout_s, self.balancer)

    def _wait(self, url: str, timeout_s: float, proc: Process) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not proc.alive:
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{url} not healthy after {timeout_s} s:\n{proc.tail()}")

    def close(self) -> None:
        procs = [*([self.balancer] if self.balancer else []), *self.server_procs,
                 *self.worker_procs]
        for p in procs:
            if p.alive:
                assert p.proc is not None
                p.proc.terminate()
        for p in procs:
            p.stop()
        self._delete_queue()

    def _delete_queue(self) -> None:
        """Queues are durable: remove this cluster's, or the broker keeps it forever."""
        try:
            from kombu import Connection  # type: ignore[attr-defined]  # re-exported lazily, untyped

            with Connection(self.broker_url) as conn:  # type: ignore[no-untyped-call]  # kombu: no types
                conn.default_channel.queue_delete(self.name)
        except Exception:  # a broker that is gone has no queue to keep
            pass

    def tail(self) -> str:
        procs = [*self.server_procs, *self.worker_procs, *([self.balancer] if self.balancer else [])]
        return "\n".join(p.tail() for p in procs)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
