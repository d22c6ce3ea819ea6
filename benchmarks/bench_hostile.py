"""Crafted hostile files uploaded to a real `metis serve` while a steady question load runs.

    .venv/bin/python benchmarks/bench_hostile.py [--runs 3] [--seconds 20] [--rate 10]

Per run: a fresh server over a fresh data dir, a small real corpus uploaded, then
  A. the question load alone for `--seconds` (open loop, `--rate` questions/s, cache off so
     every question embeds and retrieves; from a process of its own, not sharing the
     uploader's GIL);
  B. the same load while the crafted corpus of tests/hostile.py is uploaded file by file
     over HTTP, in passes, for at least `--seconds` and one whole pass.
Reported: per file its outcome (HTTP status and code) and its slowest upload time (the request
parses the file to validate it; a file it accepts has its ingestion task cancelled); the server
process's RSS growth over its phase-A level (peak during B), and that of the server with its
parser processes; the questions' p50/p99 in A and in B. Targets: every crafted file refused
or parsed within 2 s, RSS growth <= 200 MB, p99 in B within 1.5x of A (+20 ms of noise).
Figures are medians over runs. A table counts, per crafted file, the questions scheduled
while it was being uploaded (until the next upload) that were over that p99 target: which
files the tail comes from.
"""

from __future__ import annotations

import argparse
import bisect
import json
import multiprocessing
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import harness  # noqa: E402
from tests.files import FACTS, MAKERS  # noqa: E402
from tests.hostile import Crafted, corpus  # noqa: E402

MB = 1024 * 1024


class RssSampler:
    """Samples the RSS of a process (and with its children) every 50 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, float, float]] = []  # (time, server MB, with children MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                own = self.proc.memory_info().rss
                kids = 0
                for child in self.proc.children(recursive=True):
                    try:
                        kids += child.memory_info().rss
                    except psutil.Error:
                        pass
                self.samples.append((time.monotonic(), own / MB, (own + kids) / MB))
            except psutil.Error:
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def window(self, start: float, end: float) -> list[tuple[float, float, float]]:
        return [s for s in self.samples if start <= s[0] <= end]


def _question_load(url: str, rate: float, stop: Any, out: Any) -> None:
    """The load generator's process: asks until `stop` is set, then sends its latencies."""
    latencies: list[tuple[float, float, bool]] = []  # (scheduled, ms, ok)
    questions = [q for _, q, *_ in FACTS]

    def ask(client: httpx.Client, scheduled: float, i: int) -> None:
        body = {"message": questions[i % len(questions)], "cache": False}
        try:
            ok = client.post("/api/chat/query", json=body).status_code == 200
        except httpx.HTTPError:
            ok = False
        latencies.append((scheduled, (time.monotonic() - scheduled) * 1000, ok))

    with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(16) as pool:
        out.send("ready")
        start, i = time.monotonic(), 0
        while not stop.is_set():
            scheduled = start + i / rate
            delay = scheduled - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(ask, client, scheduled, i)
            i += 1
    out.send(latencies)


class QuestionLoad:
    """Open-loop questions at a fixed rate; latency counts from each question's scheduled time.

    The load runs in a process of its own: as a thread of this one it shared a GIL with the
    uploads (httpx encoding a 4 MB multipart body, the RSS sampler), which delayed questions
    that the server had already answered. CLOCK_MONOTONIC is system-wide, so its timestamps
    compare with this process's."""

    def __init__(self, url: str, rate: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._results, child_end = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_question_load, args=(url, rate, self._stop, child_end),
                                 daemon=True)
        self.latencies: list[tuple[float, float, bool]] = []

    def __enter__(self) -> QuestionLoad:
        self._proc.start()
        if self._results.recv() != "ready":
            raise RuntimeError("the question load did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.latencies = self._results.recv()
        self._proc.join()

    def window(self, start: float, end: float) -> dict[str, float]:
        ms = [m for t, m, _ in self.latencies if start <= t <= end]
        errors = sum(1 for t, _, ok in self.latencies if start <= t <= end and not ok)
        return {"n": len(ms), "errors": errors, "p50_ms": harness.percentile(ms, 0.5),
                "p99_ms": harness.percentile(ms, 0.99)}


def upload_one(client: httpx.Client, item: Crafted) -> tuple[str, float]:
    started = time.monotonic()
    r = client.post("/api/documents", files=[("files", (item.name, item.data))],
                    data={"collection": "hostile"})
    seconds = time.monotonic() - started
    if r.status_code in (200, 202):
        # Accepted: the upload parsed it within the limits. Its embedding is ordinary ingestion
        # work (bench_ingest measures it), not the cost of hostile input: cancel it.
        for task_id in r.json().get("task_ids", []):
            client.post(f"/api/tasks/{task_id}/cancel")
        return "parsed", seconds
    return f"{r.status_code} {r.json().get('code')}", seconds


@contextmanager
def profiled(pid: int, out: Path | None) -> Iterator[None]:
    """py-spy on the server for the block (without pausing it, 100 samples/s): every thread's
    stack over time as a Chrome trace (`out`), to set against slow questions, and the stacks
    holding the GIL, summed (`out` with `.gil.txt`)."""
    if out is None:
        yield
        return
    spy = str(Path(harness.PY).parent / "py-spy")
    common = ["record", "-p", str(pid), "--nonblocking", "-r", "100"]
    procs = [subprocess.Popen([spy, *common, *extra], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
             for extra in (["--idle", "--threads", "-f", "chrometrace", "-o", str(out)],
                           ["--gil", "-f", "raw", "-o", str(out.with_suffix(".gil.txt"))])]
    out.with_suffix(".start").write_text(str(time.monotonic()))
    try:
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for proc in procs:
            proc.wait(timeout=60)


def one_run(items: list[Crafted], seconds: float, rate: float, tmp: Path, run: int,
            profile: Path | None = None) -> dict[str, Any]:
    data_dir = harness.new_data_dir(tmp, f"run{run}")
    port = harness.free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"METIS_DATA_DIR": str(data_dir), "METIS_LOG_LEVEL": "warning",
           "METIS_OBSERVABILITY__ACCESS_LOG": "false"}
    args = [str(Path(harness.PY).parent / "metis"), "serve", "--port", str(port)]
    with harness.process(args, url, env=env, ready_path="/api/health",
                         log=tmp / f"server{run}.log") as proc:
        with httpx.Client(base_url=url, timeout=120) as client:
            r = client.post("/api/documents", files=[("files", (n, m())) for n, m in MAKERS.items()],
                            data={"collection": "default"})
            for task_id in r.json()["task_ids"]:
                harness.wait_task(client, task_id)
            for _, question, *_ in FACTS:  # warm the query path
                client.post("/api/chat/query", json={"message": question, "cache": False})
        with RssSampler(proc.pid) as rss, QuestionLoad(url, rate) as load:
            time.sleep(2)  # let the load settle
            a_start = time.monotonic()
            with profiled(proc.pid, profile and profile / f"run{run}-A.json"):
                time.sleep(seconds)
            a_end = b_start = time.monotonic()
            outcomes: dict[str, str] = {}
            slowest: dict[str, float] = {}
            started: list[tuple[float, str]] = []  # when each upload began, and its file
            with httpx.Client(base_url=url, timeout=120) as client, \
                    profiled(proc.pid, profile and profile / f"run{run}-B.json"):
                while True:
                    for item in items:
                        started.append((time.monotonic(), item.name))
                        outcome, took = upload_one(client, item)
                        outcomes[item.name] = outcome
                        slowest[item.name] = max(took, slowest.get(item.name, 0.0))
                    if time.monotonic() - b_start >= seconds:
                        break
            b_end = time.monotonic()
            time.sleep(0.5)
        if profile:
            (profile / f"run{run}-timeline.json").write_text(json.dumps({
                "a": [a_start, a_end], "b": [b_start, b_end], "uploads": started,
                "questions": load.latencies}))
        base = rss.window(a_start, a_end)
        during = rss.window(b_start, b_end)
    base_own = harness.median([s[1] for s in base])
    base_all = harness.median([s[2] for s in base])
    return {
        "files": {i.name: {"outcome": outcomes[i.name], "seconds": round(slowest[i.name], 3),
                           "expected": sorted(i.outcomes),
                           "as_expected": outcomes[i.name].split()[-1] in i.outcomes}
                  for i in items},
        "rss_growth_mb": max(s[1] for s in during) - base_own,
        "rss_growth_with_parsers_mb": max(s[2] for s in during) - base_all,
        "rss_base_mb": base_own,
        "without": load.window(a_start, a_end),
        "with": load.window(b_start, b_end),
        "by_file": slow_by_file(load, started, b_end, load.window(a_start, a_end)["p99_ms"]),
    }


def slow_by_file(load: QuestionLoad, started: list[tuple[float, str]], b_end: float,
                 p99_alone_ms: float) -> dict[str, list[float]]:
    """Per crafted file: [questions, slow ones, slowest ms] among the questions scheduled from
    its upload's start to the next upload's (its cancel and what follows it included); slow is
    over the p99 target (1.5x the phase-A p99, at least +20 ms). Says which files cost."""
    limit = max(1.5 * p99_alone_ms, p99_alone_ms + 20)
    out: dict[str, list[float]] = {}
    starts = [t for t, _ in started]
    for scheduled, ms, _ in load.latencies:
        i = bisect.bisect_right(starts, scheduled) - 1
        if i < 0 or scheduled > b_end:
            continue
        row = out.setdefault(started[i][1], [0, 0, 0.0])
        row[0] += 1
        row[1] += ms > limit
        row[2] = max(row[2], ms)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=10, help="questions per second")
    parser.add_argument("--skip", action="append", default=[], help="leave out a crafted file")
    parser.add_argument("--json", default=None)
    parser.add_argument("--profile", type=Path, default=None,
                        help="a folder for py-spy traces of the server (GIL holders) in A and B, "
                        "and each run's timeline of uploads and questions")
    opts = parser.parse_args()
    items = [c for c in corpus() if c.name not in opts.skip]
    if opts.profile:
        opts.profile.mkdir(parents=True, exist_ok=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        for run in range(opts.runs):
            runs.append(one_run(items, opts.seconds, opts.rate, Path(tmp), run, opts.profile))
            r = runs[-1]
            print(f"run {run + 1}: rss +{r['rss_growth_mb']:.0f} MB (with parsers "
                  f"+{r['rss_growth_with_parsers_mb']:.0f} MB); p99 {r['without']['p99_ms']:.0f} "
                  f"-> {r['with']['p99_ms']:.0f} ms", flush=True)
    med = harness.median
    print(f"\n{'file':26} {'size':>8} {'outcome':28} {'slowest s (median of runs)':>10}")
    files: dict[str, Any] = {}
    for item in items:
        seconds = med([r["files"][item.name]["seconds"] for r in runs])
        outcome = runs[-1]["files"][item.name]["outcome"]
        ok = all(r["files"][item.name]["as_expected"] for r in runs)
        files[item.name] = {"outcome": outcome, "seconds": seconds, "as_expected": ok,
                            "slow_questions": sum(r["by_file"].get(item.name, [0, 0])[1]
                                                  for r in runs)}
        print(f"{item.name:26} {len(item.data) / MB:7.2f}M {outcome:28} {seconds:8.3f}"
              f"{'' if ok else '  UNEXPECTED'}")
    print(f"\n{'questions asked while uploading':32} {'asked':>6} {'slow':>5} {'slowest ms':>10}"
          "  (all runs; slow: over the p99 target)")
    for item in sorted(items, key=lambda i: -sum(r["by_file"].get(i.name, [0, 0, 0])[1]
                                                 for r in runs)):
        rows = [r["by_file"].get(item.name, [0, 0, 0.0]) for r in runs]
        print(f"{item.name:32} {sum(r[0] for r in rows):6.0f} {sum(r[1] for r in rows):5.0f} "
              f"{max(r[2] for r in rows):10.0f}")
    slowest = max(f["seconds"] for f in files.values())
    growth = med([r["rss_growth_mb"] for r in runs])
    growth_all = med([r["rss_growth_with_parsers_mb"] for r in runs])
    p99_a = med([r["without"]["p99_ms"] for r in runs])
    p99_b = med([r["with"]["p99_ms"] for r in runs])
    figures = {
        "machine": harness.machine(), "runs": opts.runs, "rate_qps": opts.rate,
        "slowest_file_s": slowest,
        "rss_base_mb": round(med([r["rss_base_mb"] for r in runs]), 1),
        "rss_growth_mb": round(growth, 1), "rss_growth_with_parsers_mb": round(growth_all, 1),
        "p50_without_ms": round(med([r["without"]["p50_ms"] for r in runs]), 1),
        "p99_without_ms": round(p99_a, 1),
        "p50_with_ms": round(med([r["with"]["p50_ms"] for r in runs]), 1),
        "p99_with_ms": round(p99_b, 1),
        "question_errors": sum(r["with"]["errors"] + r["without"]["errors"] for r in runs),
        "unexpected_outcomes": [n for n, f in files.items() if not f["as_expected"]],
    }
    harness.write_result(opts.json, {
        "title": "Hostile uploads under a question load (median of runs)",
        "figures": figures, "files": files,
        "targets": [
            harness.target("slowest crafted file", slowest, 2.0, at_most=True, unit=" s"),
            harness.target("server RSS growth", growth, 200, at_most=True, unit=" MB"),
            harness.target("question p99 with the corpus", p99_b, max(1.5 * p99_a, p99_a + 20),
                           at_most=True, unit=" ms"),
            harness.target("unexpected outcomes", len(figures["unexpected_outcomes"]), 0,
                           at_most=True),
        ],
    })


if __name__ == "__main__":
    main()
