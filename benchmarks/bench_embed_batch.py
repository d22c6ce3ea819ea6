"""Which local-model batch size embeds chunks fastest on this machine, on several collections.

    python benchmarks/bench_embed_batch.py [--rounds 3] [--sizes 1,2,4,8,16,32]

The local ONNX model runs each batch on one core, as many at once as it has cores. This times
`OnnxEmbedder.embed` over every chunk of a collection, chunked by Metis itself, once per batch
size, the sizes interleaved in each round (median of --rounds). Collections: the stdlib prose
corpus at the default 128-token chunks and at 256-token chunks, and the Python HTML manual from
Debian's python3-doc package when it is installed (its library pages, first --docs by name).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import corpus  # noqa: E402
from metis_rag.config import ChunkSettings, EmbedSettings, Settings  # noqa: E402
from metis_rag.embed import build_embedder  # noqa: E402
from metis_rag.ingest.pipeline import Upload  # noqa: E402
from metis_rag.services import open_services  # noqa: E402

MODEL_CACHE = HERE / ".cache" / "model"
PYTHON_HTML = Path("/usr/share/doc/python3-doc/html/library")


async def chunk_texts(files: list[Path], data_dir: Path, max_tokens: int) -> list[str]:
    """The chunks Metis makes of these files (parsed and chunked as an upload is)."""
    settings = Settings(data_dir=data_dir, chunk=ChunkSettings(
        max_tokens=max_tokens, overlap_tokens=max_tokens * 3 // 16))
    async with open_services(settings) as services:
        texts: list[str] = []
        for path in files:
            prepared = await services.ingestor.prepare_async(Upload(path.name, path.read_bytes()))
            texts.extend(c.text for c in prepared.chunks)
    return texts


async def embed_s(texts: list[str], batch_size: int) -> float:
    embedder = build_embedder(EmbedSettings(batch_size=batch_size), MODEL_CACHE)
    await embedder.start()
    try:
        t = time.perf_counter()
        await embedder.embed(texts)
        return time.perf_counter() - t
    finally:
        await embedder.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--docs", type=int, default=40)
    p.add_argument("--sizes", default="1,2,4,8,16,32")
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]

    work = Path(tempfile.mkdtemp(prefix="metis-bench-batch-"))
    prose = work / "prose"
    corpus.write_corpus(prose, a.docs, words_per_doc=600)
    data_dir = work / "data"
    data_dir.mkdir()
    asyncio.run(embed_s(["warm up"], 16))  # prepares the model once
    (data_dir / "models").symlink_to(MODEL_CACHE / "models", target_is_directory=True)
    prose_files = sorted(prose.iterdir())
    collections = {
        "stdlib prose, 128-token chunks": asyncio.run(chunk_texts(prose_files, data_dir, 128)),
        "stdlib prose, 256-token chunks": asyncio.run(chunk_texts(prose_files, data_dir, 256)),
    }
    if PYTHON_HTML.is_dir():
        html = sorted(PYTHON_HTML.glob("*.html"))[:a.docs]
        collections["Python HTML manual, 128-token chunks"] = asyncio.run(
            chunk_texts(html, data_dir, 128))
    else:
        print(f"({PYTHON_HTML} missing: apt-get install python3-doc adds a third collection)")

    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(a.rounds):
        for name, texts in collections.items():
            for size in sizes:
                times.setdefault((name, size), []).append(asyncio.run(embed_s(texts, size)))
    print(f"\nmachine: {os.cpu_count()} cores; median of {a.rounds} rounds, sizes interleaved")
    print(f"{'collection':40} {'chunks':>6} " + " ".join(f"{f'b={s}':>8}" for s in sizes))
    for name, texts in collections.items():
        row = [statistics.median(times[(name, s)]) for s in sizes]
        best = sizes[row.index(min(row))]
        print(f"{name:40} {len(texts):6d} " + " ".join(f"{x:7.2f}s" for x in row)
              + f"   fastest: {best}")


if __name__ == "__main__":
    main()
