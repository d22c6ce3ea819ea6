"""What the monitoring middleware costs on the hot path, with and without it, in the same run.

    .venv/bin/python benchmarks/bench_metrics_overhead.py [--runs 5] [--requests 3000]

1. A bare ASGI endpoint, plain and wrapped in `RequestMetrics` (request id, latency histogram,
   rolling window), with the access log off and on (into /dev/null): microseconds added.
2. The real app on a cached query (an exact-cache hit, ~1 ms of work): `create_app`'s full
   stack with and without `RequestMetrics`, and with its access log: requests/s and ratios.

Requests are driven in-process through ASGI (no sockets), so the differences are the
middleware's, not the network's. Variants alternate inside each run; figures are medians of
`--runs` runs. The full app's figures swing with SQLite I/O and whatever else the machine
runs: read its ratios on a quiet machine, the bare figures anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from asgi_lifespan import LifespanManager

from metis_rag.app import create_app
from metis_rag.config import EmbedSettings, Settings
from metis_rag.observability.logs import configure_logging
from metis_rag.observability.metrics import Metrics
from metis_rag.observability.middleware import RequestMetrics

HERE = Path(__file__).resolve().parent
MODEL_CACHE = Path(os.environ.get("METIS_TEST_CACHE", HERE / ".cache" / "model"))
DOC = ("# Refunds\n\nThe refund window is 30 days. Items must be unused and in their box.\n\n"
       "# Shipping\n\nShipping is free for orders over 50 euros.\n")
QUESTION = orjson.dumps({"message": "How long is the refund window?"})

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}


async def _call(app: ASGIApp, scope: dict[str, Any], body: bytes) -> int:
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status = 0

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(dict(scope), receive, send)
    return status


async def _rate(app: ASGIApp, scope: dict[str, Any], body: bytes, n: int) -> float:
    """Requests per second over `n` sequential requests."""
    started = time.perf_counter()
    for _ in range(n):
        status = await _call(app, scope, body)
        assert status == 200, status
    return n / (time.perf_counter() - started)


async def bare(runs: int, n: int) -> dict[str, list[float]]:
    payload = orjson.dumps({"answer": "cached", "citations": []})

    async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})

    variants: dict[str, ASGIApp] = {
        "plain": endpoint,
        "metrics": RequestMetrics(endpoint, Metrics(), access_log=False),  # type: ignore[arg-type]
        "metrics+access log": RequestMetrics(endpoint, Metrics(), access_log=True),  # type: ignore[arg-type]
    }
    scope = _scope("GET", "/bench", [(b"host", b"bench")])
    us: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(runs):
        for name, app in variants.items():
            us[name].append(1e6 / await _rate(app, scope, b"", n))
    return us


async def _open_app(settings: Settings, with_middleware: bool) -> tuple[LifespanManager, ASGIApp]:
    app = create_app(settings)
    if not with_middleware:
        # The stack is built on the first call (the lifespan): drop the middleware before it.
        app.user_middleware = [m for m in app.user_middleware if m.cls is not RequestMetrics]
    manager = LifespanManager(app, startup_timeout=180)
    await manager.__aenter__()
    return manager, manager.app


async def real(runs: int, n: int, work: Path) -> dict[str, list[float]]:
    configs = {"no metrics middleware": (False, False), "metrics": (True, False),
               "metrics+access log": (True, True)}
    opened: dict[str, tuple[LifespanManager, ASGIApp]] = {}
    for i, (name, (with_mw, access)) in enumerate(configs.items()):
        data_dir = work / f"data{i}"
        data_dir.mkdir()
        (data_dir / "models").symlink_to(MODEL_CACHE / "models", target_is_directory=True)
        settings = Settings(data_dir=data_dir, observability={"access_log": access})  # type: ignore[arg-type]
        opened[name] = await _open_app(settings, with_mw)
    configure_logging("info", "json", stream=open(os.devnull, "w"))
    boundary = b"bench"
    upload = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; '
              b'filename="p.md"\r\nContent-Type: text/markdown\r\n\r\n' + DOC.encode()
              + b"\r\n--" + boundary + b"--\r\n")
    up_scope = _scope("POST", "/api/documents",
                      [(b"content-type", b"multipart/form-data; boundary=" + boundary)])
    q_scope = _scope("POST", "/api/chat/query", [(b"content-type", b"application/json")])
    for _, app in opened.values():
        assert await _call(app, up_scope, upload) == 201
        for _ in range(50):  # the first answer fills the exact cache; then warm up
            assert await _call(app, q_scope, QUESTION) == 200
    rps: dict[str, list[float]] = {k: [] for k in opened}
    slices = 20  # variants take turns every n/20 requests, so load drift hits all alike
    try:
        for _ in range(runs):
            seconds = dict.fromkeys(opened, 0.0)
            for _ in range(slices):
                for name, (_, app) in opened.items():
                    seconds[name] += (n // slices) / await _rate(app, q_scope, QUESTION,
                                                                  n // slices)
            for name in opened:
                rps[name].append((n // slices) * slices / seconds[name])
    finally:
        for manager, _ in opened.values():
            await manager.__aexit__(None, None, None)
    return rps


def _prepare_model() -> None:
    if (MODEL_CACHE / "models").exists():
        return
    from metis_rag.embed import build_embedder

    async def prepare() -> None:
        embedder = build_embedder(EmbedSettings(), MODEL_CACHE)
        await embedder.start()
        await embedder.close()

    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    asyncio.run(prepare())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    _prepare_model()
    configure_logging("info", "json", stream=open(os.devnull, "w"))

    us = asyncio.run(bare(args.runs, args.requests * 10))
    plain = statistics.median(us["plain"])
    print(f"bare ASGI endpoint, {args.requests * 10} requests x {args.runs} runs (median):")
    for name, samples in us.items():
        med = statistics.median(samples)
        extra = "" if name == "plain" else f"   +{med - plain:.1f} us per request"
        print(f"  {name:<22} {med:7.2f} us/request{extra}")

    with tempfile.TemporaryDirectory() as tmp:
        rps = asyncio.run(real(args.runs, args.requests, Path(tmp)))
    base = statistics.median(rps["no metrics middleware"])
    print(f"\ncached query through the full app, {args.requests} requests x {args.runs} runs "
          "(median):")
    for name, samples in rps.items():
        med = statistics.median(samples)
        print(f"  {name:<22} {med:8.0f} req/s  {1e6 / med:7.1f} us/request  "
              f"ratio {med / base:.3f}  (+{1e6 / med - 1e6 / base:.1f} us)")


if __name__ == "__main__":
    main()
