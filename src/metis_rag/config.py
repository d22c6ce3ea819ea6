"""Metis configuration: one typed `Settings`, read from `METIS_*` variables and an optional TOML file.

Nested sections use a double underscore in the environment: ``METIS_LLM__PROVIDER=ollama``.
The TOML file is ``metis.toml`` in the working directory, or the path in ``METIS_CONFIG``;
environment variables win over the file. Build it once (`Settings()`) and pass it down.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class EmbedSettings(BaseModel):
    backend: Literal["local", "torch", "openai", "ollama"] = Field(
        "local",
        description="local = ONNX Runtime int8 export of the packaged all-MiniLM-L6-v2 (default); "
        "torch = plain sentence-transformers; openai = any /v1/embeddings; ollama = /api/embed.",
    )
    model: str = Field(
        "all-MiniLM-L6-v2", description="Model name sent to remote backends (ignored by local)."
    )
    url: str = Field("", description="Base URL of a remote embedding backend.")
    api_key: str = Field("", description="Bearer token for an OpenAI-compatible backend.")
    batch_size: int = Field(32, ge=1, le=1024, description="Texts per model call.")
    threads: int = Field(0, ge=0, description="Intra-op threads for the local model; 0 = cores.")
    timeout_s: float = Field(60.0, gt=0, description="Timeout of a remote embedding call.")


class ChunkSettings(BaseModel):
    max_tokens: int = Field(
        128, ge=16, le=512, description="Chunk size in tokens of the embedding model's tokenizer."
    )
    overlap_tokens: int = Field(24, ge=0, description="Tokens shared by consecutive chunks.")

    @field_validator("overlap_tokens")
    @classmethod
    def _overlap_below_size(cls, v: int, info: object) -> int:
        data = getattr(info, "data", {}) or {}
        if v >= data.get("max_tokens", 128):
            raise ValueError("overlap_tokens must be smaller than max_tokens")
        return v


class RetrievalSettings(BaseModel):
    top_k: int = Field(5, ge=1, le=50, description="Chunks cited in an answer by default.")
    hybrid: bool = Field(
        True, description="Fuse full-text (FTS5) and dense results by reciprocal rank fusion."
    )
    candidates: int = Field(40, ge=1, le=1000, description="Candidates per retriever before RRF.")
    rrf_k: int = Field(60, ge=1, description="Reciprocal rank fusion constant.")
    ef_search: int = Field(96, ge=10, description="HNSW search breadth (recall vs latency).")
    history_turns: int = Field(
        4, ge=0, description="Earlier messages of a conversation given to the LLM."
    )


class LLMSettings(BaseModel):
    provider: Literal["none", "ollama", "openai"] = Field(
        "none", description="none = extractive answers with citations, no model needed."
    )
    url: str = Field("", description="Base URL, e.g. http://127.0.0.1:11434 for Ollama.")
    model: str = Field("", description="Model name sent to the provider.")
    api_key: str = Field("", description="Bearer token for an OpenAI-compatible provider.")
    temperature: float = Field(0.1, ge=0, le=2)
    max_tokens: int = Field(512, ge=1)
    timeout_s: float = Field(60.0, gt=0, description="Total time allowed for one completion.")
    connect_timeout_s: float = Field(5.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="METIS_",
        env_nested_delimiter="__",
        extra="ignore",
        toml_file="metis.toml",
    )

    data_dir: Path = Field(Path("data"), description="Where the database, index and models live.")
    database_url: str = Field(
        "",
        description="SQLAlchemy async URL; empty = SQLite at <data_dir>/metis.db. "
        "PostgreSQL: postgresql+asyncpg://user@host/db",
    )
    host: str = Field("127.0.0.1", description="Address `metis serve` binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port `metis serve` binds.")
    max_upload_mb: float = Field(50, gt=0, description="Largest accepted upload, in MB.")
    default_collection: str = Field("default", description="Collection used when none is named.")
    log_level: str = Field("info", description="Log level of the server.")
    embed: EmbedSettings = EmbedSettings()
    chunk: ChunkSettings = ChunkSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    llm: LLMSettings = LLMSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = os.environ.get("METIS_CONFIG", "metis.toml")
        toml = TomlConfigSettingsSource(settings_cls, toml_file=toml_path)
        return (init_settings, env_settings, toml)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'metis.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.sqlalchemy_url.startswith("sqlite")
