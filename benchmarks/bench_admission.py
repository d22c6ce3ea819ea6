"""Cached answers at saturation under each admission setting: p50/p99 and the share refused.

    .venv/bin/python benchmarks/bench_admission.py [--max-in-flight 0,8,32,100]
        [--loop-lag-ms 20,50,150] [--seconds 15] [--runs 3] [--env KEY=VALUE ...]

For each setting a fresh `metis serve` (SQLite unless `--env METIS_DATABASE_URL=...`) gets the
corpus and the questions of `bench_load.py`, then wrk asks them back to back over 200
connections (`--runs` times); a client refused with 503 waits out the Retry-After (1 s)
before asking again, as a well-behaved client would. Only the saturation phase of
`bench_load.py` is run: the admission limit is about overload.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_load  # noqa: E402


def measure(env: dict[str, str], args: argparse.Namespace, label: str) -> None:
    with tempfile.TemporaryDirectory(prefix="metis-admission-") as tmp:
        root = Path(tmp)
        limited = any(k.startswith("METIS_RATELIMIT__MAX_") and v != "0" for k, v in env.items())
        with bench_load.cached_server(root, 40, 50, env, root / "metis.log") as served:
            url, bodies = served.url, served.bodies
            runs = []
            for run in range(args.runs):
                w = bench_load.wrk(url, bodies, args.seconds, args.connections, 0,
                                   1000 if limited else 0)
                refused = w["error_detail"]["status"]
                runs.append(w)
                print(f"  {label} run {run + 1}: answered {w['ok_rps']:.0f}/s, p50 "
                      f"{w['p50_ms']:.1f} p99 {w['p99_ms']:.1f} ms (p99/p50 "
                      f"{w['p99_ms'] / w['p50_ms']:.2f}), refused {refused} of {w['requests']}, "
                      f"other errors {w['errors'] - refused}", flush=True)
    med = statistics.median
    print(f"{label}: median answered {med([w['ok_rps'] for w in runs]):.0f}/s, p50 "
          f"{med([w['p50_ms'] for w in runs]):.1f} ms, p99 {med([w['p99_ms'] for w in runs]):.1f}"
          f" ms, p99/p50 {med([w['p99_ms'] / w['p50_ms'] for w in runs]):.2f}, refused "
          f"{100 * med([w['error_detail']['status'] / w['requests'] for w in runs]):.1f} %",
          flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-in-flight", default="0,8,32,100")
    p.add_argument("--loop-lag-ms", default="")
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--env", nargs="*", default=[], help="more KEY=VALUE for the server")
    args = p.parse_args()
    extra = dict(e.split("=", 1) for e in args.env)
    for n in [int(x) for x in args.max_in_flight.split(",") if x]:
        measure({**extra, "METIS_RATELIMIT__MAX_IN_FLIGHT": str(n)}, args, f"max_in_flight {n}")
    for lag in [float(x) for x in args.loop_lag_ms.split(",") if x]:
        measure({**extra, "METIS_RATELIMIT__MAX_LOOP_LAG_MS": f"{lag:g}"}, args,
                f"max_loop_lag_ms {lag:g}")


if __name__ == "__main__":
    main()
