"""What API keys, roles and tenants cost per request (target: the key check <= 50 us), and
that a single-tenant server (no keys) is as fast as before tenants, in the same run.

    .venv/bin/python benchmarks/bench_auth.py [--runs 5] [--requests 3000] [--keys 10000]
                                              [--baseline /work/main]

1. `InboundLimits` around a bare ASGI endpoint, in-process: no keys (the pass-through every
   single-tenant request takes), and a valid key among `--keys` stored keys (hash, lookup,
   principal into the request state; the audited chat route also queues an audit record):
   microseconds added per request, and `KeyRing.lookup` alone.
2. The real app on an exact-cache hit: this tree without keys, this tree with an admin key,
   and (with `--baseline`, a checkout with its own .venv, e.g. main) the tree before tenants
   without keys. Each variant runs in its own process, in turns, so they share the machine's
   drift; requests/s are medians of `--runs` turns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_metrics_overhead import QUESTION, _call, _rate, _scope  # noqa: E402

MODEL_CACHE = Path(os.environ.get("METIS_TEST_CACHE", HERE / ".cache" / "model"))
DOC = ("# Refunds\n\nThe refund window is 30 days. Items must be unused and in their box.\n\n"
       "# Shipping\n\nShipping is free for orders over 50 euros.\n")
ADMIN_KEY = "bench-admin-key-0123456789abcdef0123456789abcdef"


async def key_check(runs: int, n: int, stored: int) -> dict[str, list[float]]:
    from metis_rag.api.limits import InboundLimits
    from metis_rag.tenancy.audit import AuditLog
    from metis_rag.tenancy.keys import KeyRing, hash_key, new_key
    from metis_rag.tenancy.principal import Principal

    payload = b'{"answer":"cached","citations":[]}'

    async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})

    keys = [new_key()[1] for _ in range(stored)]
    ring = KeyRing({hash_key(k): Principal("acme", "writer", k[4:16], scoped=True) for k in keys})
    audit = AuditLog(None)  # type: ignore[arg-type]  # never flushed: record() is what a request pays
    with_keys = SimpleNamespace(keyring=ring, audit=audit)
    without = SimpleNamespace(keyring=KeyRing({}), audit=audit)
    guarded = InboundLimits(endpoint)  # type: ignore[arg-type]
    key = keys[len(keys) // 2].encode()

    def scope(path: str, method: str, services: Any, headers: list[tuple[bytes, bytes]]) -> Any:
        s = _scope(method, path, headers)
        s["state"] = {"services": services}
        return s

    variants = {
        "bare endpoint": (endpoint, scope("/api/documents", "GET", without, [])),
        "no keys (single tenant)": (guarded, scope("/api/documents", "GET", without, [])),
        "valid key, GET": (guarded, scope("/api/documents", "GET", with_keys,
                                          [(b"x-api-key", key)])),
        "valid key, audited POST": (guarded, scope("/api/chat/query", "POST", with_keys,
                                                   [(b"x-api-key", key)])),
    }
    us: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(runs):
        for name, (app, sc) in variants.items():
            audit._pending.clear()
            us[name].append(1e6 / await _rate(app, sc, b"", n))  # type: ignore[arg-type]
    lookups = []
    for _ in range(runs):
        text = key.decode()
        started = time.perf_counter()
        for _ in range(n):
            ring.lookup(text)
        lookups.append((time.perf_counter() - started) / n * 1e6)
    us["KeyRing.lookup alone"] = lookups
    return us


async def app_rate(n: int, turns: int, use_key: bool) -> list[float]:
    """One variant of part 2, in this process: requests/s of an exact-cache hit, per turn."""
    from asgi_lifespan import LifespanManager

    from metis_rag.app import create_app
    from metis_rag.config import Settings
    from metis_rag.observability.logs import configure_logging

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        (data_dir / "models").symlink_to(MODEL_CACHE / "models", target_is_directory=True)
        extra: dict[str, Any] = {"api_keys": [ADMIN_KEY]} if use_key else {}
        settings = Settings(data_dir=data_dir, observability={"access_log": False}, **extra)
        app = create_app(settings)
        configure_logging("info", "json", stream=open(os.devnull, "w"))
        async with LifespanManager(app, startup_timeout=180) as manager:
            asgi = manager.app
            auth = [(b"x-api-key", ADMIN_KEY.encode())] if use_key else []
            transport = httpx.ASGITransport(app=asgi)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench",
                                         headers={k.decode(): v.decode() for k, v in auth},
                                         timeout=60) as client:
                r = await client.post("/api/documents", files={"files": ("p.md", DOC.encode())})
                assert r.status_code in (200, 201, 202), r.text
                deadline = time.monotonic() + 120
                for task_id in r.json().get("task_ids", []):
                    # Ask only once the task has stored the document (and its collection):
                    # before tenants, a question racing it could fail creating the collection.
                    while (await client.get(f"/api/tasks/{task_id}")).json()["status"] != (
                            "completed"):
                        assert time.monotonic() < deadline, "the upload did not finish"
                        await asyncio.sleep(0.05)
                while True:  # until the document is in: then the answer is cached
                    answer = (await client.post("/api/chat/query", content=QUESTION)).json()
                    if answer.get("citations"):
                        break
                    assert time.monotonic() < deadline, answer
                    await asyncio.sleep(0.1)
            q = _scope("POST", "/api/chat/query", [(b"content-type", b"application/json"), *auth])
            for _ in range(100):
                assert await _call(asgi, q, QUESTION) == 200
            return [await _rate(asgi, q, QUESTION, n) for _ in range(turns)]


def _variant(python: str, root: Path, n: int, turns: int, use_key: bool) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    out = subprocess.run(
        [python, str(Path(__file__).resolve()), "--variant", "key" if use_key else "open",
         "--requests", str(n), "--turns", str(turns)],
        capture_output=True, text=True, env=env, cwd=root)
    if out.returncode != 0:
        raise SystemExit(f"{python} ({root}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--baseline", type=Path, help="A checkout (with .venv) to compare with.")
    parser.add_argument("--variant", choices=["open", "key"], help=argparse.SUPPRESS)
    parser.add_argument("--turns", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(asyncio.run(app_rate(args.requests, args.turns, args.variant == "key"))))
        return

    us = asyncio.run(key_check(args.runs, args.requests * 10, args.keys))
    bare = statistics.median(us["bare endpoint"])
    print(f"InboundLimits around a bare ASGI endpoint, {args.requests * 10} requests x "
          f"{args.runs} runs, {args.keys} stored keys (median):")
    for name, samples in us.items():
        med = statistics.median(samples)
        extra = ("" if name in ("bare endpoint", "KeyRing.lookup alone")
                 else f"   +{med - bare:.2f} us per request")
        print(f"  {name:<26} {med:7.2f} us{extra}")

    here = HERE.parent
    python = sys.executable
    variants: dict[str, tuple[str, Path, bool]] = {
        "this tree, no keys": (python, here, False),
        "this tree, admin key": (python, here, True),
    }
    if args.baseline:
        variants["baseline, no keys"] = (str(args.baseline / ".venv" / "bin" / "python"),
                                         args.baseline, False)
    rps: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.runs):
        for name, (py, root, use_key) in variants.items():
            rps[name] += _variant(py, root, args.requests, 1, use_key)
    first = next(iter(variants))
    ref = statistics.median(rps["baseline, no keys" if args.baseline else first])
    print(f"\nexact-cache hit through the full app, {args.requests} requests x {args.runs} "
          "runs, one process per variant and run (median):")
    for name, samples in rps.items():
        med = statistics.median(samples)
        print(f"  {name:<22} {med:8.0f} req/s  {1e6 / med:7.1f} us/request  "
              f"ratio {med / ref:.3f}")


if __name__ == "__main__":
    main()
