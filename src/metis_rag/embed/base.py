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
    tokenizer that chunking uses. `start`/`close` load and release the model or HTTP client.
    """

    model_id: str
    dim: int

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...
