"""One lone question's ONNX Runtime run under session variants, interleaved question by question
so that every variant sees the same machine load, after idle gaps of 0, 3 and 30 ms (a server
asked one question at a time is idle between them). Nothing here is shipped (issue 10).

    flock /tmp/metis-cpu.lock python benchmarks/explore_query_session.py [--variants ...]

Variants: the shipped int8 model on both cores (the default session) or one intra-op thread
(`METIS_EMBED__QUERY_THREADS=1`), and the fp32 export it is quantized from (`--fp32`: exported
with torch into a temporary directory first, outside the timings). Also prints how far each
variant's vectors are from the default session's: a lone-question model whose vectors differ
would move every similarity the semantic cache and retrieval compare.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cache_workload as wl
import harness
from metis_rag.embed import onnx as metis_onnx


def session(path: Path, threads: int) -> Any:
    """As `OnnxEmbedder._load` builds its sessions (no spinning, every graph optimisation)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fp32", action="store_true", help="also the unquantized export")
    p.add_argument("--gaps-ms", default="0,3,30")
    p.add_argument("--reps", type=int, default=2, help="passes over the 148 questions")
    a = p.parse_args()
    from tokenizers import Tokenizer

    model = metis_onnx.model_dir(harness.prepared_models())
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    tokenizer.enable_padding()  # to the longest, as `OnnxEmbedder` (the file pads to 128)
    inputs = []
    for q in [q for t in wl.TOPICS for q in t.questions]:
        e = tokenizer.encode(q)  # one question: never padded, as in `embed_sync`
        inputs.append({"input_ids": np.array([e.ids], dtype=np.int64),
                       "attention_mask": np.array([e.attention_mask], dtype=np.int64)})
    sessions = {"int8, 2 threads": session(model / "model.onnx", 2),
                "int8, 1 thread": session(model / "model.onnx", 1)}
    if a.fp32:
        fp32 = Path(tempfile.mkdtemp(prefix="metis-fp32-")) / "model-f32.onnx"
        metis_onnx._export(fp32)
        sessions["fp32, 2 threads"] = session(fp32, 2)
        sessions["fp32, 1 thread"] = session(fp32, 1)
    names = list(sessions)
    print(f"machine: {harness.machine()}; {len(inputs)} questions")
    reference = np.vstack([sessions[names[0]].run(None, x)[0] for x in inputs])
    for name in names[1:]:
        got = np.vstack([sessions[name].run(None, x)[0] for x in inputs])
        print(f"{name}: max |difference| to {names[0]} {np.abs(got - reference).max():.2e}, "
              f"min cosine {np.min(np.sum(got * reference, axis=1)):.6f}")
    for name in names:  # past each session's first, slower runs
        for x in inputs[:20]:
            sessions[name].run(None, x)
    for gap in (float(g) / 1000 for g in a.gaps_ms.split(",")):
        ms: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(a.reps):
            for i, x in enumerate(inputs):
                for name in names[i % len(names):] + names[: i % len(names)]:  # rotated order
                    if gap:
                        time.sleep(gap)
                    t = time.perf_counter()
                    sessions[name].run(None, x)
                    ms[name].append((time.perf_counter() - t) * 1000)
        print(f"after {gap * 1000:.0f} ms idle, ms p50 / p95: " + "; ".join(
            f"{n} {np.percentile(ms[n], 50):.2f} / {np.percentile(ms[n], 95):.2f}"
            for n in names), flush=True)


if __name__ == "__main__":
    main()
