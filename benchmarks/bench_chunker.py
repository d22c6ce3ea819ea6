"""Parse and chunk throughput of a 200-page text with the packaged tokenizer, both ways of
counting tokens (was a unit test that printed its figures; speed lives here).

    python benchmarks/bench_chunker.py [--pages 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from metis_rag.embed.packaged import count_tokens  # noqa: E402
from metis_rag.ingest.chunker import Chunker  # noqa: E402
from metis_rag.ingest.parsers import parse  # noqa: E402
from tests.ingest.test_chunker import synthetic_document  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    doc = synthetic_document(args.pages, seed=1)
    data = "\n\n".join(s.text for s in doc.sections).encode()
    count_tokens(["warm up"])
    for counts_add_up in (False, True):
        chunker = Chunker(count_tokens, 128, 24, counts_add_up=counts_add_up)
        seconds, n = [], 0
        for _ in range(args.runs):
            started = time.perf_counter()
            n = len(chunker.chunk(parse(data, "big.txt")))
            seconds.append(time.perf_counter() - started)
        s = statistics.median(seconds)
        print(f"parse+chunk {args.pages} pages ({len(data) // 1024} KiB, counts_add_up="
              f"{counts_add_up}): {n} chunks in {s:.2f} s = {n / s:.0f} chunks/s "
              f"(median of {args.runs})")


if __name__ == "__main__":
    main()
