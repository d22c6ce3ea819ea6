"""The default embedder: the packaged all-MiniLM-L6-v2 exported to ONNX and quantized to int8.

`prepare_onnx_model` exports the packaged sentence-transformers model (transformer + mean
pooling + L2 normalisation in one graph) with torch, then quantizes its weights per channel
to int8 with ONNX Runtime. It runs once, offline, into ``<data_dir>/models/`` and is reused
by every later start; a lock file keeps two processes from exporting at the same time.
Measured on a 2-core AMD EPYC: about 2x the throughput of plain sentence-transformers on
torch, with cosine >= 0.98 to its embeddings (benchmarks/bench_ingest.py).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..config import EmbedSettings
from . import packaged

log = logging.getLogger("metis.embed")

VARIANT = "onnx-int8"
FORMAT = 1  # bump when the export changes, so old exports are redone
DIM = 384


def model_dir(models_dir: Path) -> Path:
    return models_dir / f"{packaged.MODEL_NAME}-{VARIANT}"


def _is_prepared(target: Path) -> bool:
    meta = target / "meta.json"
    if not (meta.exists() and (target / "model.onnx").exists()):
        return False
    try:
        return int(json.loads(meta.read_text()).get("format", 0)) == FORMAT
    except (ValueError, OSError):
        return False


def prepare_onnx_model(models_dir: Path) -> Path:
    """Export and quantize the packaged model into `models_dir` unless already there."""
    target = model_dir(models_dir)
    if _is_prepared(target):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with (models_dir / ".prepare.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be exporting right now
        if _is_prepared(target):
            return target
        log.info("preparing the ONNX int8 embedding model into %s (once)", target)
        work = Path(tempfile.mkdtemp(prefix=".export-", dir=models_dir))
        try:
            _export(work / "model-f32.onnx")
            _quantize(work / "model-f32.onnx", work / "model.onnx")
            (work / "model-f32.onnx").unlink()
            shutil.copy(packaged.packaged_model_dir() / "tokenizer.json", work / "tokenizer.json")
            (work / "meta.json").write_text(json.dumps(
                {"format": FORMAT, "source": packaged.MODEL_NAME, "variant": VARIANT, "dim": DIM}
            ))
            if target.exists():
                shutil.rmtree(target)
            os.replace(work, target)  # whole directory at once: never half a model
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _export(path: Path) -> None:
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(packaged.packaged_model_dir()), local_files_only=True)
    bert.eval()

    class MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1)

    sample = torch.ones(2, 16, dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter, on purpose: the dynamo one needs onnxscript and gains
        # nothing for a plain BERT; torch is pinned, so its deprecation notice is noise.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            MeanPooled(), (sample, sample), str(path), dynamo=False, opset_version=17,
            input_names=["input_ids", "attention_mask"], output_names=["embedding"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "embedding": {0: "batch"}},
        )


class _NotFromOnnxRuntime(logging.Filter):
    """The quantizer logs dozens of notes per layer on the root logger: keep them out of
    Metis's log (the one line 'preparing the ONNX int8 embedding model' says enough)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname


def _quantize(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = _NotFromOnnxRuntime()
    logging.getLogger().addFilter(quiet)
    try:
        quantize_dynamic(str(source), str(target), per_channel=True, weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().removeFilter(quiet)


QUERY_MAX_TEXTS = 4  # calls this small go to the query session


class OnnxEmbedder:
    """`Embedder` on ONNX Runtime. Texts are sorted by length and cut into small batches of
    similar lengths (`_batches`), so padding wastes little. The session runs each batch on one
    core, and `runs` batches at once (ONNX Runtime releases the GIL): a call's batches spread
    over a pool of that many threads, and a call of at most `QUERY_MAX_TEXTS` texts (a
    question) runs in its caller's thread beside them instead of waiting for a chunk batch to
    end. One batch split over every core (until 2026-12-07) lost time whenever another thread
    took one of them, as the split halves wait for each other (docs/benchmarks.md: the
    `bench_ingest.py` row of the 2026-12-07 evening)."""

    def __init__(self, settings: EmbedSettings, models_dir: Path) -> None:
        self.model_id = f"local:{packaged.MODEL_NAME}:{VARIANT}"
        self.dim = DIM
        self._settings = settings
        self._models_dir = models_dir
        self._session: Any = None
        self._query_session: Any = None
        self._tokenizer: Any = None
        self.runs = settings.cores
        self._pool: ThreadPoolExecutor | None = None
        self._query_lock = threading.Lock()

    async def start(self) -> None:
        if self._session is None:
            await asyncio.to_thread(self._load)

    def _load(self) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        directory = prepare_onnx_model(self._models_dir)
        def session(threads: int) -> Any:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # Workers that spin between operators take the cores from everything else on the
            # machine (the server's event loop, parsers, other servers), and then wait for it:
            # under load, a question's model run took 15.7 ms p50 with spinning, 1.6 without.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return ort.InferenceSession(str(directory / "model.onnx"), options,
                                        providers=["CPUExecutionProvider"])

        self._session = session(1)
        if self.runs > 1:
            self._pool = ThreadPoolExecutor(self.runs, thread_name_prefix="metis-embed")
        # A question is a few tokens: splitting it over every core costs more in hand-offs than
        # it saves, and its own session lets questions run beside a chunk batch being embedded.
        if self._settings.query_threads:
            self._query_session = session(self._settings.query_threads)
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        tokenizer.enable_truncation(packaged.max_seq_length())
        tokenizer.enable_padding()
        self._tokenizer = tokenizer
        self._warm_up()

    def _warm_up(self) -> None:
        """Run each session once at start: its first runs allocate buffers and pack weights
        (measured: the first question after start took several times a later one's time),
        and the first questions a server gets should not pay for that."""
        question = ["How do I rotate the API keys of a running server?"]
        for texts in (question, question * QUERY_MAX_TEXTS, question * (QUERY_MAX_TEXTS + 1)):
            self.embed_sync(texts)

    async def close(self) -> None:
        self._session = self._query_session = None
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return packaged.count_tokens(list(texts))

    @property
    def counting_tokenizer(self) -> str | None:
        return packaged.tokenizer_file()

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._session is None:
            raise RuntimeError("OnnxEmbedder.embed called before start()")
        return await asyncio.to_thread(self.embed_sync, list(texts))

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        """Blocking encode (for worker threads and processes)."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if self._query_session is not None and len(texts) <= QUERY_MAX_TEXTS:
            with self._query_lock:
                self._run(self._query_session, texts, np.arange(len(texts)), out)
            return out
        batches = _batches([len(t) for t in texts], self._settings.local_batch_size)
        if self._pool is None or len(texts) <= QUERY_MAX_TEXTS:
            for idx in batches:
                self._run(self._session, texts, idx, out)
        else:  # through the pool, so chunk batches never run more at once than it has threads
            # Each batch writes its own rows of `out`; list() re-raises a batch's error.
            list(self._pool.map(lambda idx: self._run(self._session, texts, idx, out), batches))
        return out

    def _run(self, session: Any, texts: list[str], idx: np.ndarray, out: np.ndarray) -> None:
        encoded = self._tokenizer.encode_batch_fast([texts[i] for i in idx])
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        out[idx] = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def _batches(lengths: Sequence[int], size: int) -> list[np.ndarray]:
    """Indices of the texts, shortest first, in batches of at most `size` whose longest text
    is at most about twice the shortest. Beside saving padding, this keeps the int8 model
    accurate: activations are quantized with one range per call, so a word or two batched
    with a 256-token chunk lost precision ("ok" fell to cosine 0.935 to torch on an AVX2-only
    CPU; alone or among short texts it stays above 0.96)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    out: list[np.ndarray] = []
    start = 0
    for end in range(1, len(order) + 1):
        if end == len(order) or end - start == size or (
            lengths[order[end]] > 2 * lengths[order[start]] + 16
        ):
            out.append(order[start:end])
            start = end
    return out
