"""The `Embedder` interface. Backends: `local` (ONNX int8), `torch`, `openai`, `ollama`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors.

    `model_id` names the model *and* its numeric variant (e.g. ``local:all-MiniLM-L6-v2:onnx-int8``)
    so that caches keyed by it never mix vectors of different models. `embed` takes any number
    of texts and batches them itself; it returns an array of shape ``(len(texts), dim)``.
    CPU-bound backends do their work off the event loop. `count_tokens` counts tokens of the
    tokenizer that chunking uses; `counting_tokenizer` names that tokenizer's file
    (`tokenizer.json`) when another process can count the same way from it, so chunking can run
    in the parser process instead of the server. `start`/`close` load and release the model or
    HTTP client.
    """

    model_id: str
    dim: int

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    @property
    def counting_tokenizer(self) -> str | None: ...


class WrappedEmbedder:
    """Base of the layers around an `Embedder` (cache, batching, metering): holds `inner`,
    mirrors its `model_id` and `dim` (some backends know them only once started), and passes
    start/close/count_tokens through; a subclass adds `embed`."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dim = inner.dim

    async def start(self) -> None:
        await self.inner.start()
        self.model_id, self.dim = self.inner.model_id, self.inner.dim

    async def close(self) -> None:
        await self.inner.close()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    @property
    def counting_tokenizer(self) -> str | None:
        return self.inner.counting_tokenizer
