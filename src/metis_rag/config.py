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
    batch_size: int = Field(
        16, ge=1, le=1024,
        description="Texts per model call (local: length-sorted batches; 16 measured fastest).",
    )
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
    temperature: float = Field(0.1, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(512, ge=1, description="Most tokens generated per answer.")
    timeout_s: float = Field(60.0, gt=0, description="Total time allowed for one completion.")
    connect_timeout_s: float = Field(5.0, gt=0, description="Time allowed to connect.")


class CacheSettings(BaseModel):
    enabled: bool = Field(True, description="Master switch of every cache level.")
    backend: Literal["disk", "redis", "memory"] = Field(
        "disk",
        description="Shared tier behind the in-process memory tier: disk (SQLite under the data "
        "dir, survives restarts), redis (shared by every server), or memory only.",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Used when backend=redis.")
    redis_timeout_ms: float = Field(
        50, gt=0, description="A slower Redis call is abandoned and served without that tier."
    )
    namespace: str = Field(
        "default", description="Tenant namespace when a request names none (X-Metis-Namespace)."
    )
    memory_max_entries: int = Field(20_000, ge=1, description="Memory tier bound, entries.")
    memory_max_mb: float = Field(256, gt=0, description="Memory tier bound, MB of values.")
    disk_max_mb: float = Field(2048, gt=0, description="Disk tier bound, MB of values.")
    compress_min_bytes: int = Field(1024, ge=0, description="zstd-compress values above this.")
    query_ttl_s: float = Field(
        86_400, gt=0, description="Exact and semantic answers; old collection versions age out."
    )
    retrieval_ttl_s: float = Field(86_400, gt=0, description="Retrieval results.")
    embedding_ttl_s: float = Field(
        30 * 86_400, gt=0, description="Embeddings (content-addressed: model + text hash)."
    )
    llm_ttl_s: float = Field(7 * 86_400, gt=0, description="LLM completions by full prompt.")
    document_ttl_s: float = Field(7 * 86_400, gt=0, description="Parsed documents by hash.")
    semantic_threshold: float = Field(
        0.95, gt=0, le=1, description="Cosine similarity above which an earlier question's "
        "answer is reused (chosen by benchmarks/bench_semantic_threshold.py)."
    )
    semantic_max_entries: int = Field(
        50_000, ge=1, description="Questions kept in the semantic indexes, all namespaces."
    )
    price_per_1k_tokens: float = Field(
        0.002, ge=0, description="LLM price used to estimate the cost saved, per 1k tokens."
    )
    invalidations_per_min: int = Field(
        30, ge=1, description="Rate limit of DELETE /api/cache per client."
    )


class TaskSettings(BaseModel):
    backend: Literal["embedded", "celery"] = Field(
        "embedded",
        description="embedded = in-process asyncio engine (default); celery = Celery workers "
        "started with `metis worker` (install the `tasks` extra).",
    )
    concurrency: int = Field(4, ge=1, le=256, description="Most tasks running at once per process.")
    min_concurrency: int = Field(
        1, ge=1, description="Floor the resource monitor may lower the concurrency to under load."
    )
    default_timeout_s: float = Field(3600, gt=0, description="Timeout of a task that names none.")
    default_max_retries: int = Field(3, ge=0, le=100, description="Retries of a task that names none.")
    retry_base_s: float = Field(
        1.0, gt=0, description="First retry delay; doubles per attempt, with full jitter."
    )
    retry_max_s: float = Field(300, gt=0, description="Longest retry delay.")
    monitor_interval_s: float = Field(
        2.0, gt=0, description="Resource monitor sampling period (CPU, memory, disk, I/O wait)."
    )
    cpu_high_percent: float = Field(
        90, gt=0, le=100, description="CPU use above which concurrency is lowered and an alert raised."
    )
    memory_high_percent: float = Field(
        90, gt=0, le=100, description="Memory use above which concurrency is lowered and an alert raised."
    )
    disk_high_percent: float = Field(
        95, gt=0, le=100, description="Disk use (of the data dir) above which an alert is raised."
    )
    iowait_high_percent: float = Field(
        30, gt=0, le=100, description="I/O wait above which concurrency is lowered and an alert raised."
    )
    heartbeat_s: float = Field(
        5.0, gt=0, description="How often a process renews its lease on the tasks it runs."
    )
    lease_s: float = Field(
        30.0, gt=0, description="A process silent this long is dead: its tasks are re-queued."
    )
    broker_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672//",
        description="Celery broker (RabbitMQ gives real priorities; redis:// also works).",
    )
    queue: str = Field("metis", description="Celery queue name.")
    redispatch_after_s: float = Field(
        120, gt=0,
        description="Celery: a pending task not started this long after it was sent is sent again.",
    )
    index_follow_s: float = Field(
        1.0, gt=0,
        description="Celery: how often the server pulls chunks written by workers into its index.",
    )
    handler_modules: list[str] = Field(
        [], description="Extra modules whose `register(registry)` adds task handlers."
    )
    stats_window_s: float = Field(
        300, gt=0, description="Window of the throughput and mean wait/run figures."
    )
    keep_finished_days: float = Field(
        30, gt=0, description="purge_tasks deletes finished tasks older than this."
    )


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
    cache: CacheSettings = CacheSettings()
    tasks: TaskSettings = TaskSettings()

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
