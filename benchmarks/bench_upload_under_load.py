"""Uploads while 200 clients ask cached questions, on the embedded SQLite default (target: no
500, every accepted upload stored whole; an overloaded database may refuse with 503
`database_busy` and Retry-After).

    flock /tmp/metis-cpu.lock .venv/bin/python benchmarks/bench_upload_under_load.py \
        [--seconds 30] [--connections 200] [--uploaders 2]

A real `metis serve` on a temp data dir gets a small corpus and every question once (the cache
fills); then wrk asks the cached questions back to back on `--connections` connections (as
bench_load.py does) while `--uploaders` clients upload new files (POST /api/documents) and
replace one (PUT /api/documents/{id}) in a loop. Every answer's status is counted, every
accepted upload's task is followed to its end, and each stored document is read back: its
chunk count must be the task's. The server's log is searched for "database is locked" (the
statement that raised it is printed).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402
import harness  # noqa: E402
from bench_load import cached_server, wrk  # noqa: E402


def _text(i: int, words: int) -> bytes:
    stream = [w for _, text in corpus.sections() for w in text.split()]
    start = (i * 997) % max(1, len(stream) - words)
    return (f"Upload {i} under load.\n\n" + " ".join(stream[start:start + words])).encode()


def _uploader(url: str, n: int, stop: threading.Event, words: int,
              out: dict[str, Any], lock: threading.Lock) -> None:
    with httpx.Client(base_url=url, timeout=120) as client:
        r = client.post("/api/documents", files=[("files", (f"replaced-{n}.txt", _text(10_000 + n,
                                                                                      words)))],
                        data={"collection": "bench"})
        r.raise_for_status()
        target = harness.wait_task(client, r.json()["task_ids"][0])["document_id"]
        i = 0
        while not stop.is_set():
            i += 1
            if i % 2:
                name = f"up-{n}-{i}.txt"
                started = time.perf_counter()
                r = client.post("/api/documents", files=[("files", (name, _text(n * 100_000 + i,
                                                                                   words)))],
                                data={"collection": "bench"})
                kind = "POST"
            else:
                started = time.perf_counter()
                r = client.put(f"/api/documents/{target}",
                               files={"files": ("x.txt", _text(n * 100_000 + i, words))})
                kind = "PUT"
            elapsed = time.perf_counter() - started
            with lock:
                out["statuses"][f"{kind} {r.status_code}"] += 1
                out["seconds"].append(elapsed)
                if r.status_code >= 500:
                    out["errors"].append({"kind": kind, "status": r.status_code,
                                          "retry_after": r.headers.get("retry-after"),
                                          "body": r.text[:300]})
            if r.status_code == 202:
                task_id = (r.json()["task_ids"][0] if kind == "POST" else r.json()["id"])
                with lock:
                    out["accepted"].append((kind, task_id))
            elif r.status_code == 503 and r.headers.get("retry-after"):
                time.sleep(float(r.headers["retry-after"]))


def _check_accepted(url: str, accepted: list[tuple[str, str]]) -> dict[str, Any]:
    """Follows every accepted upload's task to its end; a completed one's document must hold
    the chunks the task says it stored."""
    outcome: Counter[str] = Counter()
    problems: list[str] = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for kind, task_id in accepted:
            try:
                result = harness.wait_task(client, task_id, timeout_s=300)
            except RuntimeError as exc:
                outcome[f"{kind} task failed"] += 1
                problems.append(str(exc)[:300])
                continue
            outcome[f"{kind} task completed"] += 1
            doc = client.get(f"/api/documents/{result['document_id']}").json()
            if kind == "POST" and doc.get("chunk_count") != result.get("chunks"):
                problems.append(f"document {result['document_id']}: {doc.get('chunk_count')} "
                                f"chunks stored, task said {result.get('chunks')}")
    return {"outcome": dict(outcome), "problems": problems}


def _locked_in_log(log: Path) -> dict[str, Any]:
    text = log.read_text(errors="replace") if log.exists() else ""
    statements = Counter(m.group(1)[:120] for m in re.finditer(
        r"database is locked\W+\[SQL: ([^\]]*)", text))
    return {"lines with 'database is locked'": text.count("database is locked"),
            "unhandled errors logged": text.count("unhandled error"),
            "statements that raised it": dict(statements.most_common(8))}


def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="metis-upload-load-") as tmp:
        root = Path(tmp)
        log = root / "metis.log"
        with cached_server(root, args.docs, args.questions, log=log) as served:
            url, bodies = served.url, served.bodies
            out: dict[str, Any] = {"statuses": Counter(), "seconds": [], "errors": [],
                                   "accepted": []}
            lock, stop = threading.Lock(), threading.Event()
            uploaders = [threading.Thread(target=_uploader,
                                          args=(url, n, stop, args.words, out, lock))
                         for n in range(args.uploaders)]
            for t in uploaders:
                t.start()
            load = wrk(url, bodies, args.seconds, args.connections)
            stop.set()
            for t in uploaders:
                t.join()
            checked = _check_accepted(url, out["accepted"])
        found = _locked_in_log(log)
        if args.keep_log:
            Path(args.keep_log).write_text(log.read_text(errors="replace"))
    seconds = out["seconds"]
    return {
        "name": "upload_under_load",
        "title": f"Uploads during {args.connections} clients of cached questions (SQLite)",
        "figures": {
            "seconds": args.seconds, "uploaders": args.uploaders,
            "cached questions answered/s": round(load["ok_rps"], 1),
            "cached question errors": load["error_detail"],
            "upload answers": dict(out["statuses"]),
            "upload p50/p99/max s": [round(harness.percentile(seconds, q), 3)
                                     for q in (0.5, 0.99, 1.0)],
            "5xx answers (first 5)": out["errors"][:5],
            "accepted uploads": checked["outcome"],
            "problems (first 5)": checked["problems"][:5],
            **found,
        },
        "targets": [
            harness.target("upload answers 500", sum(v for k, v in out["statuses"].items()
                                                     if k.endswith(" 500")), 0, at_most=True),
            harness.target("5xx without Retry-After",
                           sum(1 for e in out["errors"] if not e["retry_after"]), 0,
                           at_most=True),
            harness.target("accepted uploads lost or partial", len(checked["problems"]), 0,
                           at_most=True),
        ],
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--uploaders", type=int, default=2)
    p.add_argument("--docs", type=int, default=20)
    p.add_argument("--questions", type=int, default=30)
    p.add_argument("--words", type=int, default=600, help="words per uploaded file")
    p.add_argument("--keep-log", default=None, help="copy the server's log here")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    harness.write_result(a.json, main(a))
