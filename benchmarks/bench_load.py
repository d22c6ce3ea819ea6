"""Cached queries under 200 concurrent clients, against a bare FastAPI endpoint in the same run
(targets: zero errors, p99 <= 50 ms, requests/s >= 50% of the bare endpoint).

    .venv/bin/python benchmarks/bench_load.py [--seconds 60] [--connections 200] [--runs 3]
                                              [--think-ms 1000] [--quick]

Two phases per run, each against both servers. Throughput: 200 connections ask back to back
(closed loop) until the server is saturated; requests/s is compared. Latency: 200 clients
that each ask again about `--think-ms` after an answer (uniformly 0.5x to 1.5x, so they do not
arrive in waves; by default every user asks a question a second: a busy server, not a
saturated one); p99 and errors are read there. A latency target
cannot be read at saturation: 200 back-to-back clients wait 200 / (requests/s) on average by
Little's law, 50 ms only above 4,000 requests/s, faster than the bare endpoint itself here.

The load generator is wrk (Debian: `apt-get install wrk`): a C event loop that needs a small
share of one core for thousands of requests a second, where a Python generator (Locust
included) would take a whole core of the two and measure itself. It POSTs JSON bodies through
`wrk_post.lua`. A real `metis serve` gets a small corpus over HTTP; every question (and its
lower-case, punctuation-free twin, the same once normalized) is asked once to fill the cache;
then wrk asks them again for `--seconds`. The bare app (`bare_app.py`, one uvicorn process
like `metis serve`) answers the same JSON from a dict. Runs alternate between the two.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402
import harness  # noqa: E402


def wrk(url: str, bodies: Path, seconds: float, connections: int,
        think_ms: float = 0, retry_after_ms: float = 0) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
            "-s", str(HERE / "wrk_post.lua"), url]
    env = {**os.environ, "BODIES": str(bodies), "THINK_MS": str(think_ms),
           "RETRY_AFTER_MS": str(retry_after_ms), "CONNECTIONS": str(connections)}
    out = subprocess.run(args, env=env, capture_output=True,
                         text=True, timeout=seconds + 120, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRK_JSON "))
    data = json.loads(line[len("WRK_JSON "):])
    seconds_run = data["duration_us"] / 1e6
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {
        "rps": data["requests"] / seconds_run, "requests": data["requests"], "errors": errors,
        # Answered, not refused: a 503 `overloaded` is cheap and must not count as throughput.
        "ok_rps": (data["requests"] - data["status"]) / seconds_run,
        "error_detail": {k: data[k] for k in ("connect", "read", "write", "status", "timeout")},
        "p50_ms": data["percentiles_us"]["50"] / 1000, "p95_ms": data["percentiles_us"]["95"] / 1000,
        "p99_ms": data["percentiles_us"]["99"] / 1000, "max_ms": data["max_us"] / 1000,
        "cdf_ms": [int(x) / 1000 for x in data["cdf_us"]],
        # wrk's percentiles above are corrected for coordinated omission (synthetic samples
        # below every slow one); these are of the requests actually answered (wrk_post.lua).
        **({f"raw_p{p}_ms": data["raw_percentiles_us"][p] / 1000 for p in ("50", "95", "99")}
           if "raw_percentiles_us" in data else {}),
    }


def warm(url: str, messages: list[str]) -> dict[str, Any]:
    """Asks every question once (filling the cache); returns the answers an exact hit gives.

    A question the semantic cache answered from a neighbour's entry has none of its own: it
    is left out, so every request of the run is an exact hit.
    """
    answers = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for message in messages:
            harness.call(client, "POST", "/api/chat/query",
                         json={"message": message, "collection": "bench"})
        for message in messages:
            r = harness.call(client, "POST", "/api/chat/query",
                             json={"message": message, "collection": "bench"})
            r.raise_for_status()
            if r.json()["cache"]["level"] == "exact":
                answers[message] = r.json()
    return answers


@dataclass
class Cached:
    url: str
    chunks: int
    answers: dict[str, Any]  # question -> the answer an exact hit gives
    bodies: Path  # wrk's request bodies, one per question in `answers`


@contextmanager
def cached_server(root: Path, docs: int, questions: int, env: dict[str, str] | None = None,
                  log: Path | None = None) -> Iterator[Cached]:
    """A `metis serve` over `docs` corpus files whose questions (and their normalized twins)
    have each been asked once, so that every body in `bodies` is an exact hit."""
    harness.link_models(root / "data")
    corpus.write_corpus(root / "docs", docs)
    topics = harness.questions(questions)
    messages = [t[0] for t in topics] + [t[1] for t in topics]
    with harness.metis_server(root / "data", env=env, log=log) as url:
        chunks = harness.upload_corpus(url, root / "docs")
        answers = warm(url, messages)
        bodies = root / "bodies.jsonl"
        bodies.write_text("".join(json.dumps({"message": m, "collection": "bench"}) + "\n"
                                  for m in answers))
        yield Cached(url, chunks, answers, bodies)


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.seconds = min(args.seconds, 10)
    with tempfile.TemporaryDirectory(prefix="metis-load-") as tmp:
        root = Path(tmp)
        env = ({"METIS_RATELIMIT__MAX_IN_FLIGHT": str(args.max_in_flight)}
               if args.max_in_flight else None)
        with cached_server(root, args.docs, args.questions, env, root / "metis.log") as served:
            url, chunks, answers, bodies = (served.url, served.chunks, served.answers,
                                            served.bodies)
            messages = list(answers)
            (root / "answers.json").write_text(json.dumps(answers))
            port = harness.free_port()
            bare_url = f"http://127.0.0.1:{port}"
            bare = [harness.PY, str(HERE / "bare_app.py"), str(root / "answers.json"), str(port)]
            with harness.process(bare, bare_url, ready_path="/api/health"):
                before = httpx.get(url + "/api/cache/stats").json()
                runs = []
                for run in range(args.runs):
                    order = ("bare", "metis") if run % 2 == 0 else ("metis", "bare")
                    got: dict[str, Any] = {}
                    for phase, think in (("", 0.0), ("_latency", args.think_ms)):
                        for name in order:
                            got[name + phase] = wrk(bare_url if name == "bare" else url, bodies,
                                                    args.seconds, args.connections, think,
                                                    args.retry_after_ms
                                                    if args.max_in_flight else 0)
                    got["ratio"] = got["metis"]["ok_rps"] / got["bare"]["ok_rps"]
                    m, b, lat = got["metis"], got["bare"], got["metis_latency"]
                    print(f"  run {run + 1}: saturated: metis {m['ok_rps']:.0f} answered/s "
                          f"({m['rps']:.0f} req/s, p50 {m['p50_ms']:.1f} p99 {m['p99_ms']:.1f} ms, "
                          f"{m['error_detail']['status']} refused; uncorrected p50 "
                          f"{m.get('raw_p50_ms', 0):.1f} p99 {m.get('raw_p99_ms', 0):.1f} ms), bare "
                          f"{b['rps']:.0f} req/s (p50 {b['p50_ms']:.1f} p99 {b['p99_ms']:.1f} ms), "
                          f"ratio {got['ratio']:.2f}; with {args.think_ms:g}"
                          f" ms think time: metis {lat['rps']:.0f} req/s p50 {lat['p50_ms']:.1f} "
                          f"p99 {lat['p99_ms']:.1f} ms (bare p99 "
                          f"{got['bare_latency']['p99_ms']:.1f} ms); errors "
                          f"{m['errors'] + lat['errors']}")
                    runs.append(got)
                after = httpx.get(url + "/api/cache/stats").json()
    med = harness.median
    metis = [r["metis"] for r in runs]
    latency = [r["metis_latency"] for r in runs]
    return {
        "name": "load", "title": f"Cached queries, {args.connections} concurrent clients",
        "figures": {
            "chunks": chunks, "distinct bodies": len(messages),
            "seconds per run": args.seconds, "load generator": "wrk -t1 (C, epoll)",
            "saturated: metis requests/s answered (not refused)":
                round(med([m["ok_rps"] for m in metis]), 1),
            "saturated: metis requests/s with refusals": round(med([m["rps"] for m in metis]), 1),
            "saturated: bare FastAPI requests/s": round(med([r["bare"]["rps"] for r in runs]), 1),
            "saturated: bare p50/p95/p99 ms": [round(med([r["bare"][k] for r in runs]), 2)
                                               for k in ("p50_ms", "p95_ms", "p99_ms")],
            "saturated: metis p50/p95/p99 ms": [round(med([m[k] for m in metis]), 2)
                                                for k in ("p50_ms", "p95_ms", "p99_ms")],
            "saturated: metis p99 / p50": round(med([m["p99_ms"] / m["p50_ms"] for m in metis
                                                     if m["p50_ms"]]), 2),
            "saturated: metis p50/p95/p99 ms, uncorrected by wrk":
                [round(med([m.get(f"raw_{k}", 0.0) for m in metis]), 2)
                 for k in ("p50_ms", "p95_ms", "p99_ms")],
            # The yardstick's own tail: at 200 back-to-back connections it is seconds too.
            "saturated: bare p99 / p50": round(med([r["bare"]["p99_ms"] / r["bare"]["p50_ms"]
                                                    for r in runs if r["bare"]["p50_ms"]]), 2),
            "saturated: share refused (503 overloaded)": round(med(
                [m["error_detail"]["status"] / max(1, m["requests"]) for m in metis]), 4),
            f"{args.think_ms:g} ms think time: metis requests/s":
                round(med([m["rps"] for m in latency]), 1),
            f"{args.think_ms:g} ms think time: metis p50/p95/p99 ms":
                [round(med([m[k] for m in latency]), 2) for k in ("p50_ms", "p95_ms", "p99_ms")],
            f"{args.think_ms:g} ms think time: bare p50/p95/p99 ms":
                [round(med([r["bare_latency"][k] for r in runs]), 2)
                 for k in ("p50_ms", "p95_ms", "p99_ms")],
            "metis errors": [m["error_detail"] for m in metis + latency],
            "exact-cache hits during the runs": _hits(before, after),
        },
        "runs": runs,
        "targets": [
            harness.target("errors (all runs)", sum(m["errors"] for m in metis + latency), 0,
                           at_most=True),
            harness.target(f"p99 latency, {args.connections} clients thinking "
                           f"{args.think_ms:g} ms (median of runs)",
                           med([m["p99_ms"] for m in latency]), 50, at_most=True, unit=" ms"),
            harness.target("requests/s vs bare FastAPI (median of runs)",
                           med([r["ratio"] for r in runs]), 0.5),
        ],
    }


def _hits(before: dict[str, Any], after: dict[str, Any]) -> Any:
    try:
        return after["levels"]["exact"]["hits"] - before["levels"]["exact"]["hits"]
    except (KeyError, TypeError):
        return None


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--docs", type=int, default=40)
    p.add_argument("--questions", type=int, default=50)
    p.add_argument("--think-ms", type=float, default=1000)
    p.add_argument("--max-in-flight", type=int, default=0,
                   help="METIS_RATELIMIT__MAX_IN_FLIGHT of the server (0: no admission limit); "
                   "refused requests count in wrk's status errors")
    p.add_argument("--retry-after-ms", type=float, default=1000,
                   help="a client refused with 503 waits this long before asking again (the "
                   "server's Retry-After); 0: it asks again at once")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    harness.write_result(a.json, main(a))
