"""Shared plumbing of the throughput benchmarks: servers in subprocesses, questions, results.

Every benchmark here runs its servers (`metis serve`, the fake LLM, a bare FastAPI app) as
their own processes, so the load generator never shares a GIL with what it measures. A
benchmark writes its figures as JSON (`--json PATH`) for `metis bench`, and prints them.
"""

from __future__ import annotations

import json
import os
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

from corpus import sections  # benchmarks run as scripts: this folder is on sys.path

HERE = Path(__file__).resolve().parent
PY = sys.executable


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
    """Shares the prepared ONNX model (METIS_TEST_CACHE, else the repo's data dir)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cache = os.environ.get("METIS_TEST_CACHE")
    candidates = [Path(cache) / "models"] if cache else []
    candidates += [HERE.parent / ".pytest_cache" / "metis-models" / "models",
                   HERE.parent / "data" / "models"]
    for models in candidates:
        if models.is_dir() and not (data_dir / "models").exists():
            (data_dir / "models").symlink_to(models.resolve(), target_is_directory=True)
            return


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


def upload_corpus(url: str, docs: Path, collection: str = "bench") -> int:
    """Uploads every file under `docs` through the HTTP API; returns the chunk count."""
    chunks = 0
    files = sorted(p for p in docs.rglob("*") if p.is_file())
    with httpx.Client(base_url=url, timeout=600) as client:
        for start in range(0, len(files), 20):
            batch = [("files", (p.name, p.read_bytes())) for p in files[start : start + 20]]
            r = client.post("/api/documents", files=batch, data={"collection": collection})
            r.raise_for_status()
            chunks += sum(x.get("chunks", 0) for x in r.json()["results"])
    return chunks


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
