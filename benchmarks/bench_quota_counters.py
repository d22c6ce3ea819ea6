"""What a quota check costs on each counter store: p50/p99 of one `Quotas.admit_question`
(one atomic add on a shared counter) with 1 and 16 concurrent clients.

    .venv/bin/python benchmarks/bench_quota_counters.py [--checks 2000] [--runs 3]
        [--stores memory,sqlite,postgresql,redis] [--redis redis://127.0.0.1:6379/0]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres]

Each client is a coroutine of one event loop (as a server's requests are) asking for its tenant
in a loop; every check is timed alone. SQLite is a file in a temporary directory (WAL, as the
server opens it); PostgreSQL is a scratch database made and dropped on the given server; Redis
keys get a unique prefix and expire. Figures are medians over `--runs` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from metis_rag.config import AuthSettings, QuotaSettings, Settings
from metis_rag.devtools.pgvector_server import SYSTEM_URL, probe_server
from metis_rag.store.db import create_engine, migrate
from metis_rag.tenancy.counters import CounterStore, DatabaseCounters, MemoryCounters
from metis_rag.tenancy.counters.fallback import LocalFallback
from metis_rag.tenancy.counters.redis import RedisCounters
from metis_rag.tenancy.quotas import Quotas

CLIENTS = (1, 16)


@asynccontextmanager
async def open_store(kind: str, args: argparse.Namespace) -> AsyncIterator[CounterStore]:
    async with AsyncExitStack() as stack:
        if kind == "memory":
            store: CounterStore = MemoryCounters()
        elif kind == "redis":
            store = LocalFallback(RedisCounters(args.redis))  # as the server builds it
        else:
            if kind == "postgresql":
                server = probe_server(args.postgres)
                assert server is not None, f"no PostgreSQL at {args.postgres}"
                name = await server.create_database("metis_bench_quota")
                stack.push_async_callback(server.drop_database, name)
                settings = Settings(data_dir=Path(tempfile.mkdtemp()),
                                    database_url=server.url(name))
            else:
                tmp = stack.enter_context(tempfile.TemporaryDirectory())
                settings = Settings(data_dir=Path(tmp))
            engine = create_engine(settings)
            stack.push_async_callback(engine.dispose)
            await migrate(engine)
            store = DatabaseCounters(engine)
        await store.start()
        stack.push_async_callback(store.close)
        yield store


async def measure(store: CounterStore, clients: int, checks: int) -> list[float]:
    settings = AuthSettings(quota_key_prefix=f"metis-bench:{uuid.uuid4().hex}:",
                            quotas=QuotaSettings(questions_per_minute=1e12))
    quotas = Quotas(settings, store)
    per_client = max(1, checks // clients)
    for _ in range(20):  # warm the pool and the statement caches
        await quotas.admit_question("warmup")

    async def client(i: int) -> list[float]:
        tenant = f"tenant-{i % 4}"  # a few tenants: some clients share a counter, as in life
        out: list[float] = []
        for _ in range(per_client):
            started = time.perf_counter()
            await quotas.admit_question(tenant)
            out.append(time.perf_counter() - started)
        return out

    results = await asyncio.gather(*(client(i) for i in range(clients)))
    return [t for r in results for t in r]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(args: argparse.Namespace) -> None:
    print(f"{'store':<11} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'checks/s':>9}   runs (p99)")
    for kind in args.stores.split(","):
        for clients in CLIENTS:
            p50s, p99s, rates = [], [], []
            for _ in range(args.runs):
                async with open_store(kind, args) as store:
                    started = time.perf_counter()
                    times = await measure(store, clients, args.checks)
                    rates.append(len(times) / (time.perf_counter() - started))
                p50s.append(pct(times, 0.50) * 1000)
                p99s.append(pct(times, 0.99) * 1000)
            runs = ", ".join(f"{v:.2f}" for v in p99s)
            print(f"{kind:<11} {clients:>7} {statistics.median(p50s):>8.3f} "
                  f"{statistics.median(p99s):>8.3f} {statistics.median(rates):>9.0f}   {runs}",
                  flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checks", type=int, default=2000, help="checks per run and client count")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--stores", default="memory,sqlite,postgresql,redis")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--postgres", default=SYSTEM_URL)
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse(sys.argv[1:])))
