"""Task engine overhead: no-op throughput and enqueue-to-start latency, embedded and on Celery,
with plain Celery running the same no-op workload in the same run (median of --runs).

    python benchmarks/bench_tasks.py [--n 5000] [--samples 200] [--runs 3] [--workers 1]
        [--concurrency 4] [--database-url URL] [--broker URL] [--skip-distributed]
        [--skip-embedded]

Embedded: N no-op tasks submitted by N concurrent callers (one task each, as HTTP requests
would) until the last is completed and its state written; latency: one task at a time on an
idle engine, from the call to `submit` to the handler's first line. Distributed: the same on
`metis worker` processes and on plain Celery workers (same Celery settings, same pool and
concurrency; the bare task only RPUSHes its start time to Redis). Per-task overhead =
wall time / N; the ratio Metis / bare Celery is the figure to watch (target <= 1.5).
Targets: embedded >= 2,000 tasks/s and p99 <= 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from sqlalchemy import text  # noqa: E402

from metis_rag.config import Settings, TaskSettings  # noqa: E402
from metis_rag.store.db import create_engine, migrate  # noqa: E402
from metis_rag.tasks import build_backend  # noqa: E402
from metis_rag.tasks.handlers import build_registry  # noqa: E402
from metis_rag.tasks.types import TaskSpec  # noqa: E402

HANDLERS = ["metis_rag.devtools.task_handlers"]
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/metis_bench_tasks"


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def settings_for(data_dir: Path, database_url: str, **tasks: object) -> Settings:
    base = {"concurrency": 4, "min_concurrency": 4, "handler_modules": HANDLERS}
    return Settings(data_dir=data_dir, database_url=database_url,
                    tasks=TaskSettings(**{**base, **tasks}))  # type: ignore[arg-type]


async def _open(settings: Settings, role: str = "server"):  # type: ignore[no-untyped-def]
    engine = create_engine(settings)
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM task_edges"))
        await conn.execute(text("DELETE FROM tasks"))
        await conn.execute(text("DELETE FROM task_workers"))
    backend = build_backend(settings, engine, build_registry(settings.tasks), role)  # type: ignore[arg-type]
    await backend.start(None)
    return engine, backend


# Distributed runs poll for completion every 20 ms, both engines. Metis's poll asks whether any
# task of the run is still unfinished (an index probe on `status`, 0.02 ms), bare Celery's is an
# LLEN; each run starts on a vacuumed table. A `count(*)` of completed rows read every row
# version the run left behind: 1.9 ms a poll on the bloated table of the third run, about 10 %
# of a core over a 2 s run, charged to Metis by the harness.
DISTRIBUTED_POLL_S = 0.02
UNFINISHED = text("SELECT EXISTS (SELECT 1 FROM tasks WHERE status IN "
                  "('pending', 'scheduled', 'waiting', 'running'))")


async def throughput(backend, n: int, poll_s: float = 0.005) -> float:  # type: ignore[no-untyped-def]
    async with backend.engine.begin() as conn:  # count this run's tasks only
        await conn.execute(text("DELETE FROM task_edges"))
        await conn.execute(text("DELETE FROM tasks"))
    if backend.engine.dialect.name == "postgresql":
        async with backend.engine.connect() as conn:
            await (await conn.execution_options(isolation_level="AUTOCOMMIT")).execute(
                text("VACUUM tasks"))
    t = time.perf_counter()
    ids: list[str] = []
    for start in range(0, n, 1000):  # 1,000 callers at a time, one task each
        outs = await asyncio.gather(*(backend.submit([TaskSpec("noop")])
                                      for _ in range(min(1000, n - start))))
        ids += [o[0].id for o in outs]
    async with backend.engine.connect() as conn:  # every row is written once submit returns
        while True:
            await backend.sync()
            if not (await conn.execute(UNFINISHED)).scalar_one():
                break
            await conn.commit()  # a new snapshot for the next poll
            await asyncio.sleep(poll_s)
    elapsed = time.perf_counter() - t
    async with backend.engine.connect() as conn:
        done = (await conn.execute(text(
            "SELECT count(*) FROM tasks WHERE status = 'completed'"))).scalar_one()
    if done != n:
        raise RuntimeError(f"{n - done} of {n} no-op tasks did not complete")
    return n / elapsed


async def latency(backend, samples: int, gap_s: float) -> list[float]:  # type: ignore[no-untyped-def]
    sent: dict[str, float] = {}
    for _ in range(samples):
        t = time.time()
        sent[(await backend.submit([TaskSpec("stamp")]))[0].id] = t
        await asyncio.sleep(gap_s)
    done = await backend.wait(list(sent), timeout_s=120)
    return [(done[i].result["started"] - sent[i]) * 1000 for i in sent]


async def embedded_round(n: int, samples: int, concurrency: int) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(Path(tmp), "", concurrency=concurrency, min_concurrency=concurrency)
        engine, backend = await _open(settings)
        try:
            tps = await throughput(backend, n)
            lat = await latency(backend, samples, 0.005)
        finally:
            await backend.close()
            await engine.dispose()
    return tps, lat


# -- distributed


def start_workers(kind: str, count: int, env: dict[str, str], concurrency: int,
                  logs: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(count):
        if kind == "metis":
            cmd = [sys.executable, "-m", "metis_rag", "worker", "--concurrency", str(concurrency)]
        else:
            cmd = [sys.executable, "-m", "celery", "-A", "bare_celery", "worker", "--pool=threads",
                   f"--concurrency={concurrency}", "-Q", env["BARE_QUEUE"], "--without-gossip",
                   "--without-mingle", "--without-heartbeat", "--loglevel=WARNING",
                   "-n", f"bare{i}-{uuid.uuid4().hex[:6]}@%h"]
        out = open(logs / f"{kind}{i}.log", "wb")
        procs.append(subprocess.Popen(cmd, env=env, cwd=HERE, stdout=out, stderr=subprocess.STDOUT))
    return procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


class Bare:
    """Plain Celery: publish from a thread, count starts in Redis."""

    def __init__(self, queue: str, key: str, broker: str) -> None:
        import redis

        from metis_rag.tasks.celery import broker_priority, make_celery

        self.settings = TaskSettings(queue=queue, broker_url=broker)
        self.app = make_celery(self.settings)
        self.priority = broker_priority(self.settings, 1)
        self.queue, self.key = queue, key
        self.redis = redis.Redis()

    def _publish(self, n: int, gap_s: float = 0.0) -> None:
        with self.app.producer_or_acquire() as producer:
            for _ in range(n):
                self.app.send_task("bare.noop", args=[time.time()], queue=self.queue,
                                   producer=producer, priority=self.priority)
                if gap_s:
                    time.sleep(gap_s)

    async def throughput(self, n: int) -> float:
        self.redis.delete(self.key)
        t = time.perf_counter()
        await asyncio.to_thread(self._publish, n)
        while self.redis.llen(self.key) < n:
            await asyncio.sleep(DISTRIBUTED_POLL_S)
        return n / (time.perf_counter() - t)

    async def latency(self, samples: int, gap_s: float) -> list[float]:
        self.redis.delete(self.key)
        await asyncio.to_thread(self._publish, samples, gap_s)
        while self.redis.llen(self.key) < samples:
            await asyncio.sleep(0.01)
        pairs = [x.decode().split() for x in self.redis.lrange(self.key, 0, -1)]
        return [(float(b) - float(a)) * 1000 for a, b in pairs]


async def wait_ready(backend, n_workers: int, bare: Bare) -> None:  # type: ignore[no-untyped-def]
    """Until every worker of both kinds answers (a warm-up task each)."""
    await backend.wait([t.id for t in await backend.submit(
        [TaskSpec("noop") for _ in range(n_workers * 4)])], timeout_s=120)
    await bare.throughput(n_workers * 4)


async def distributed(args: argparse.Namespace, logs: Path) -> dict[str, list[float]]:
    run_id = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(Path(tmp), args.database_url, backend="celery",
                                queue=f"bench-metis-{run_id}", concurrency=args.concurrency,
                                min_concurrency=args.concurrency, broker_url=args.broker)
        env = {**os.environ, "METIS_DATA_DIR": tmp, "METIS_DATABASE_URL": args.database_url,
               "METIS_TASKS__BACKEND": "celery", "METIS_TASKS__QUEUE": settings.tasks.queue,
               "METIS_TASKS__MIN_CONCURRENCY": str(args.concurrency),
               "METIS_TASKS__HANDLER_MODULES": f'["{HANDLERS[0]}"]', "METIS_CACHE__ENABLED": "false",
               "METIS_LOG_LEVEL": "warning", "BARE_QUEUE": f"bench-bare-{run_id}",
               "BARE_KEY": f"bench:{run_id}", "PYTHONPATH": f"{HERE}:{REPO / 'src'}",
               "METIS_TASKS__BROKER_URL": args.broker, "BARE_BROKER": args.broker}
        (Path(tmp) / "models").symlink_to(args.models, target_is_directory=True)
        engine, backend = await _open(settings, "client")
        workers = (start_workers("metis", args.workers, env, args.concurrency, logs)
                   + start_workers("bare", args.workers, env, args.concurrency, logs))
        bare = Bare(env["BARE_QUEUE"], env["BARE_KEY"], args.broker)
        out: dict[str, list[float]] = {k: [] for k in ("bare_tps", "metis_tps")}
        out.update({k: [] for k in ("bare_p50", "bare_p99", "metis_p50", "metis_p99")})
        try:
            await wait_ready(backend, args.workers, bare)
            for _ in range(args.runs):
                out["bare_tps"].append(await bare.throughput(args.n))
                out["metis_tps"].append(await throughput(backend, args.n, DISTRIBUTED_POLL_S))
                lat = await bare.latency(args.samples, 0.02)
                out["bare_p50"].append(pct(lat, 50))
                out["bare_p99"].append(pct(lat, 99))
                lat = await latency(backend, args.samples, 0.02)
                out["metis_p50"].append(pct(lat, 50))
                out["metis_p99"].append(pct(lat, 99))
        finally:
            stop(workers)
            await backend.close()
            await engine.dispose()
            bare.app.close()
            from kombu import Connection

            with Connection(args.broker) as conn:  # durable queues outlive the run otherwise
                for queue in (settings.tasks.queue, env["BARE_QUEUE"]):
                    conn.default_channel.queue_delete(queue)
    return out


async def ensure_database(url: str) -> None:
    if not url.startswith("postgresql"):
        return
    import asyncpg

    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="no-op tasks per throughput run")
    ap.add_argument("--samples", type=int, default=200, help="latency samples per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1, help="worker processes of each kind")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--database-url", default=PG_URL,
                    help="database of the distributed run (default: a PostgreSQL bench database)")
    ap.add_argument("--models", default=os.environ.get(
        "METIS_TEST_CACHE", str(REPO / ".pytest_cache" / "metis-models")) + "/models",
        help="a prepared models/ directory (the workers load the embedder)")
    ap.add_argument("--broker", default=TaskSettings().broker_url,
                    help="Celery broker of both Metis and bare Celery (amqp:// or redis://)")
    ap.add_argument("--skip-distributed", action="store_true")
    ap.add_argument("--skip-embedded", action="store_true")
    args = ap.parse_args()

    emb_tps, emb_p50, emb_p99 = [], [], []
    for _ in range(0 if args.skip_embedded else args.runs):
        tps, lat = asyncio.run(embedded_round(args.n, args.samples, args.concurrency))
        emb_tps.append(tps)
        emb_p50.append(pct(lat, 50))
        emb_p99.append(pct(lat, 99))
    if not args.skip_embedded:
        print_embedded(args, emb_tps, emb_p50, emb_p99)
    if args.skip_distributed:
        return
    asyncio.run(ensure_database(args.database_url))
    with tempfile.TemporaryDirectory() as logs:
        d = asyncio.run(distributed(args, Path(logs)))
    print_distributed(args, d)


def print_embedded(args: argparse.Namespace, emb_tps: list[float], emb_p50: list[float],
                   emb_p99: list[float]) -> None:
    med = statistics.median
    print(f"embedded  ({args.n} no-op tasks, concurrency {args.concurrency}, median of {args.runs})")
    print(f"  throughput        {med(emb_tps):8.0f} tasks/s   (target >= 2000)  runs: "
          + ", ".join(f"{x:.0f}" for x in emb_tps))
    print(f"  enqueue-to-start  p50 {med(emb_p50):6.2f} ms   p99 {med(emb_p99):6.2f} ms  "
          "(target p99 <= 10 ms)")


def print_distributed(args: argparse.Namespace, d: dict[str, list[float]]) -> None:
    med = statistics.median
    bare_ms, metis_ms = 1000 / med(d["bare_tps"]), 1000 / med(d["metis_tps"])
    print(f"distributed ({args.workers} worker process(es) each, {args.concurrency} slots: bare on "
          "Celery's threads pool, Metis on its loop pool, "
          f"{args.broker.split(':')[0]} broker, {args.database_url.split(':')[0]})")
    print(f"  bare Celery  {med(d['bare_tps']):7.0f} tasks/s  {bare_ms:6.3f} ms/task   "
          f"latency p50 {med(d['bare_p50']):6.2f} ms  p99 {med(d['bare_p99']):6.2f} ms")
    print(f"  Metis        {med(d['metis_tps']):7.0f} tasks/s  {metis_ms:6.3f} ms/task   "
          f"latency p50 {med(d['metis_p50']):6.2f} ms  p99 {med(d['metis_p99']):6.2f} ms")
    print(f"  per-task overhead Metis / bare Celery: {metis_ms / bare_ms:.2f}x  (target <= 1.5x)"
          "  runs: " + ", ".join(f"{b / m:.2f}x" for b, m in zip(d["bare_tps"], d["metis_tps"],
                                                                  strict=True)))


if __name__ == "__main__":
    main()
