"""What the benchmarks share: the prepared model, a real `metis serve` in a subprocess, and
percentiles. Benchmarks import it as a sibling module (they run as scripts)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
MODEL_HOME = CACHE / "model"  # <MODEL_HOME>/models holds the prepared ONNX model


def prepared_models() -> Path:
    """The ONNX model, prepared once into benchmarks/.cache (outside every timing); call it
    before any event loop runs."""
    from metis_rag.config import EmbedSettings
    from metis_rag.embed import build_embedder

    async def prepare() -> None:
        embedder = build_embedder(EmbedSettings(), MODEL_HOME)
        await embedder.start()
        await embedder.close()

    asyncio.run(prepare())
    return MODEL_HOME / "models"


def new_data_dir(parent: Path, name: str) -> Path:
    """A fresh data dir that shares the model `prepared_models()` prepared."""
    data_dir = parent / name
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    (data_dir / "models").symlink_to(MODEL_HOME / "models", target_is_directory=True)
    return data_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 900) -> float:
    t = time.perf_counter()
    while time.perf_counter() - t < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError("server exited during start-up")
        try:
            if httpx.get(url + "/api/health", timeout=5).status_code == 200:
                return time.perf_counter() - t
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("server did not start")


@contextmanager
def metis_server(data_dir: Path, env: Mapping[str, str] | None = None,
                 quiet: bool = True) -> Iterator[str]:
    """A real `metis serve` on a free port; yields its base URL."""
    port = free_port()
    full_env = {**os.environ, "METIS_DATA_DIR": str(data_dir), "METIS_PORT": str(port),
                "METIS_LOG_LEVEL": "warning", **(env or {})}
    out = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen([sys.executable, "-m", "metis_rag", "serve"], env=full_env,
                            stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if xs else float("nan")


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, Python {sys.version.split()[0]}"


def load_100k() -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """The corpus built once by build_100k.py: chunk texts, their vectors, queries, theirs."""
    import json

    if not (CACHE / "vectors_100k.npy").exists():
        raise SystemExit("run benchmarks/build_100k.py first (embeds the corpus once)")
    texts = [json.loads(ln) for ln in (CACHE / "chunks_100k.jsonl").open()]
    queries = [json.loads(ln) for ln in (CACHE / "queries.jsonl").open()]
    return texts, np.load(CACHE / "vectors_100k.npy"), queries, np.load(CACHE / "queries.npy")


async def insert_chunks(settings: Any, texts: list[str], vectors: np.ndarray,
                        collection: str = "bench", per_doc: int = 100) -> None:
    """Chunks and their stored embeddings written straight into a fresh database (documents of
    `per_doc` chunks), as ingestion would have left them; the server builds its index from
    them at start-up."""
    import hashlib
    from datetime import UTC, datetime

    from sqlalchemy import insert

    from metis_rag.store.db import create_engine, migrate
    from metis_rag.store.models import Chunk, Collection, Document

    engine = create_engine(settings)
    await migrate(engine)
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(insert(Collection), [{"id": 1, "name": collection, "version": 1,
                                                 "created_at": now, "updated_at": now}])
        docs = [
            {"id": d + 1, "collection_id": 1, "filename": f"doc{d:04d}.txt", "folder": "",
             "content_hash": hashlib.sha256(str(d).encode()).hexdigest(), "mime": "text/plain",
             "size_bytes": 1, "title": None, "tags": [], "status": "ready", "error": None,
             "chunk_count": per_doc, "created_at": now, "updated_at": now}
            for d in range((len(texts) + per_doc - 1) // per_doc)
        ]
        await conn.execute(insert(Document), docs)
        for start in range(0, len(texts), 5000):
            rows = [
                {"document_id": i // per_doc + 1, "collection_id": 1, "position": i % per_doc,
                 "text": texts[i], "page": None, "section": None, "token_count": 60,
                 "embedding": vectors[i].astype("<f4").tobytes()}
                for i in range(start, min(start + 5000, len(texts)))
            ]
            await conn.execute(insert(Chunk), rows)
    await engine.dispose()
