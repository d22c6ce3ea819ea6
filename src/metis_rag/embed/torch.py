"""Plain sentence-transformers on torch: the reference the local ONNX embedder is measured
against, and a choice for users who want the unquantized model."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import EmbedSettings
from . import packaged


class TorchEmbedder:
    def __init__(self, settings: EmbedSettings) -> None:
        path = Path(settings.model_path) if settings.model_path else None
        self.model_id = f"torch:{path.name if path else packaged.MODEL_NAME}"
        self._path = path
        self.dim = 384
        self._settings = settings
        self._model: Any = None
        self._run_lock = threading.Lock()

    async def start(self) -> None:
        if self._model is None:
            await asyncio.to_thread(self._load)

    def _load(self) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(self._settings.cores)
        path = self._path or packaged.packaged_model_dir()
        # local_files_only: a model path is a directory on disk, never a hub name to fetch.
        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        # sentence-transformers 5 renamed the method (the old name warns).
        dimension = getattr(self._model, "get_embedding_dimension", None) or \
            self._model.get_sentence_embedding_dimension
        self.dim = int(dimension() or self.dim)

    async def close(self) -> None:
        self._model = None

    @property
    def counting_tokenizer(self) -> str | None:
        # A model of its own counts with its transformers tokenizer, in this process only.
        return packaged.tokenizer_file() if self._path is None else None

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if self._path is None:
            return packaged.count_tokens(list(texts))
        if self._model is None:
            raise RuntimeError("TorchEmbedder.count_tokens called before start()")
        ids = self._model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._model is None:
            raise RuntimeError("TorchEmbedder.embed called before start()")
        return await asyncio.to_thread(self._encode, list(texts))

    def _encode(self, texts: list[str]) -> np.ndarray:
        with self._run_lock:
            vectors = self._model.encode(
                texts, batch_size=self._settings.batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)
