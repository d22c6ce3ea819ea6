"""What the benchmarks share: the prepared model, servers in subprocesses, corpora, results.

Every benchmark runs its servers (`metis serve`, the fake LLM, a bare FastAPI app) as their
own processes, so the load generator never shares a GIL with what it measures. A benchmark
writes its figures as JSON (`--json PATH`) for `metis bench`, and prints them. Benchmarks run
as scripts and import this as a sibling module.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from corpus import sections  # benchmarks run as scripts: this folder is on sys.path

HERE = Path(__file__).resolve().parent
PY = sys.executable
CACHE = HERE / ".cache"
MODEL_HOME = CACHE / "model"  # <MODEL_HOME>/models holds the prepared ONNX model


def prepared_models() -> Path:
    """The ONNX model, prepared once into benchmarks/.cache (outside every timing)."""
    from metis_rag.embed.onnx import prepare_onnx_model

    prepare_onnx_model(MODEL_HOME / "models")
    return MODEL_HOME / "models"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(samples: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) by nearest rank; 0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


@contextmanager
def process(args: Sequence[str], url: str, *, env: dict[str, str] | None = None,
            ready_path: str = "/", log: Path | None = None,
            timeout_s: float = 180) -> Iterator[subprocess.Popen[bytes]]:
    """Runs `args` until the block ends; waits until `url + ready_path` answers."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{args[:4]} exited with {proc.returncode} (log: {log})")
            try:
                if httpx.get(url + ready_path, timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{args[:4]} did not start within {timeout_s:g} s")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()  # type: ignore[union-attr]


@contextmanager
def fake_llm(**config: Any) -> Iterator[str]:
    """The fake Ollama/OpenAI server (its own process); yields its URL."""
    port = free_port()
    args = [PY, "-m", "metis_rag.devtools.fake_llm", "--port", str(port)]
    for name, value in config.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    url = f"http://127.0.0.1:{port}"
    with process(args, url, ready_path="/api/tags"):
        yield url


@contextmanager
def metis_server(data_dir: Path, env: dict[str, str] | None = None,
                 log: Path | None = None) -> Iterator[str]:
    """A real `metis serve` on a free port over `data_dir`; yields its URL."""
    port = free_port()
    env = {"METIS_DATA_DIR": str(data_dir), "METIS_LOG_LEVEL": "warning", **(env or {})}
    args = [str(Path(PY).parent / "metis"), "serve", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with process(args, url, env=env, ready_path="/api/health", log=log):
        yield url


def link_models(data_dir: Path) -> None:
    """Shares the prepared ONNX model with a data dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "models").exists():
        (data_dir / "models").symlink_to(prepared_models(), target_is_directory=True)


def new_data_dir(parent: Path, name: str) -> Path:
    """A fresh, empty data dir that shares the prepared model."""
    data_dir = parent / name
    if data_dir.exists():
        shutil.rmtree(data_dir)
    link_models(data_dir)
    return data_dir


def questions(n_topics: int) -> list[list[str]]:
    """Per topic of the corpus: a question and paraphrases of it (case and wording)."""
    out = []
    for title, _ in sections()[: n_topics * 3 : 3]:
        name = title.split(":")[-1].strip() or title
        out.append([
            f"What does {name} do?",
            f"what does {name} do",  # same once normalized: an exact-cache hit
            f"What is {name} for?",
            f"Explain what {name} does.",
        ])
    return out


def call(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request, asked again after Retry-After while the server refuses it as overloaded
    (its admission limit may be set, and refuses setup requests too while it ingests)."""
    while True:
        r = client.request(method, url, **kwargs)
        if r.status_code != 503 or r.headers.get("retry-after") is None:
            return r
        time.sleep(float(r.headers["retry-after"]))


def upload_corpus(url: str, docs: Path, collection: str = "bench") -> int:
    """Uploads every file under `docs` through the HTTP API and waits for its ingestion tasks
    and their documents' analyses (low-priority tasks whose CPU would otherwise overlap the
    measured phase; cached answers no longer depend on them); returns the number of chunks
    stored."""
    chunks = 0
    files = sorted(p for p in docs.rglob("*") if p.is_file())
    with httpx.Client(base_url=url, timeout=600) as client:
        for start in range(0, len(files), 20):
            batch = [("files", (p.name, p.read_bytes())) for p in files[start : start + 20]]
            r = call(client, "POST", "/api/documents", files=batch,
                     data={"collection": collection})
            r.raise_for_status()
            for task_id in r.json().get("task_ids", []):
                result = wait_task(client, task_id)
                chunks += result.get("chunks", 0)
                if result.get("analysis_task_id"):
                    wait_task(client, result["analysis_task_id"])
    return chunks


def wait_task(client: httpx.Client, task_id: str, timeout_s: float = 600) -> dict[str, Any]:
    """The result of a task once it completed (raises if it failed or was cancelled)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        task = call(client, "GET", f"/api/tasks/{task_id}").json()
        if task["status"] == "completed":
            return dict(task.get("result") or {})
        if task["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"task {task_id} {task['status']}: {task.get('error')}")
        time.sleep(0.05)
    raise TimeoutError(f"task {task_id} did not finish in {timeout_s:g} s")


def target(name: str, value: float, limit: float, *, at_most: bool = False,
           unit: str = "") -> dict[str, Any]:
    ok = value <= limit if at_most else value >= limit
    return {"name": name, "value": round(value, 4), "limit": limit,
            "op": "<=" if at_most else ">=", "unit": unit, "ok": ok}


def write_result(path: str | None, result: dict[str, Any]) -> None:
    """Prints the figures and targets; writes the whole result as JSON when `path` is set."""
    print(f"\n== {result['title']}")
    for key, value in result.get("figures", {}).items():
        print(f"  {key}: {value}")
    for t in result.get("targets", []):
        mark = "PASS" if t["ok"] else "FAIL"
        print(f"  [{mark}] {t['name']}: {t['value']}{t['unit']} (target {t['op']} "
              f"{t['limit']}{t['unit']})")
    if path:
        Path(path).write_text(json.dumps(result, indent=1))


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
