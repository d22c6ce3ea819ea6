"""Embedding models: the `Embedder` interface in `base`, one module per backend, built by
`build_embedder`. Backend modules are imported only when chosen, so a remote backend never
loads onnxruntime or torch."""

from __future__ import annotations

from pathlib import Path

from ..config import EmbedSettings
from .base import Embedder


def build_embedder(settings: EmbedSettings, data_dir: Path) -> Embedder:
    """The configured embedder, not yet started (`start()` loads or prepares the model)."""
    if settings.backend == "local":
        from .onnx import OnnxEmbedder

        return OnnxEmbedder(settings, Path(data_dir) / "models")
    if settings.backend == "torch":
        from .torch import TorchEmbedder

        return TorchEmbedder(settings)
    if settings.backend == "openai":
        from .openai import OpenAIEmbedder

        return OpenAIEmbedder(settings)
    if settings.backend == "ollama":
        from .ollama import OllamaEmbedder

        return OllamaEmbedder(settings)
    raise ValueError(f"unknown embedding backend {settings.backend!r}")
