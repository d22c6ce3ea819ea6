"""Chat models: the `LLM` interface in `base`, one module per provider, built by `build_llm`."""

from __future__ import annotations

from ..config import LLMSettings
from .base import LLM


def build_llm(settings: LLMSettings) -> LLM | None:
    """The configured provider, not yet started; ``None`` when the provider is ``none``."""
    # Provider modules are imported only when chosen, so `none` never loads httpx.
    if settings.provider == "ollama":
        from .ollama import OllamaLLM

        return OllamaLLM(settings)
    if settings.provider == "openai":
        from .openai import OpenAILLM

        return OpenAILLM(settings)
    if settings.provider == "none":
        return None
    raise ValueError(f"unknown LLM provider {settings.provider!r}")
