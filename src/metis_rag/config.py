"""Metis configuration: one typed `Settings`, read from `METIS_*` variables and an optional TOML file.

Nested sections use a double underscore in the environment: ``METIS_LLM__PROVIDER=ollama``.
The TOML file is ``metis.toml`` in the working directory, or the path in ``METIS_CONFIG``;
environment variables win over the file. Build it once (`Settings()`) and pass it down.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
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
    model_path: str = Field(
        "", description="torch backend: a local sentence-transformers model directory loaded "
        "instead of the packaged all-MiniLM-L6-v2 (its own tokenizer then sizes the chunks; "
        "nothing is downloaded). Re-ingest after changing it."
    )
    url: str = Field("", description="Base URL of a remote embedding backend.")
    api_key: str = Field("", description="Bearer token for an OpenAI-compatible backend.")
    batch_size: int = Field(
        16, ge=1, le=1024,
        description="Texts per model call of the torch and remote backends (a remote call is "
        "one HTTP request).",
    )
    local_batch_size: int = Field(
        1, ge=1, le=1024,
        description="Texts per run of the local ONNX model, each run on one core (length-sorted "
        "batches above 1). 1 measured fastest on three collections (bench_embed_batch.py): "
        "1.60 s for 522 chunks against 2.31 s at 16.",
    )
    threads: int = Field(
        0, ge=0, description="Cores the local model uses; 0 = all. ONNX (`local`) runs that "
        "many batches at once, one core each (a question runs beside chunk batches); torch "
        "splits each batch over them.",
    )
    query_threads: int = Field(
        0, ge=0, description="Intra-op threads of a second session of the local model for calls "
        "of at most 4 texts (questions); 0 = no second session (measured no faster: README).",
    )
    timeout_s: float = Field(60.0, gt=0, description="Timeout of a remote embedding call.")

    @property
    def cores(self) -> int:
        """`threads`, with 0 read as every core."""
        return self.threads or os.cpu_count() or 1

    @property
    def batches_help(self) -> bool:
        """Whether one call of many texts beats as many calls of one: not for the local model
        at one text per run, where a gathered batch is the same runs, waited for together
        (bench_batching.py: open-loop p95 24 ms unbatched against 53 ms batched)."""
        return not (self.backend == "local" and self.local_batch_size == 1)


    @field_validator("model_path")
    @classmethod
    def _a_model_directory(cls, v: str) -> str:
        if v and not (Path(v) / "config.json").is_file():
            raise ValueError(f"model_path {v!r} is not a model directory (no config.json)")
        return v


CHARS_PER_TOKEN = 8  # the ceiling METIS_PARSE__MAX_TEXT_CHARS=0 derives the text limit with


class ChunkSettings(BaseModel):
    max_tokens: int = Field(
        128, ge=16, le=512, description="Chunk size in tokens of the embedding model's tokenizer."
    )
    overlap_tokens: int = Field(24, ge=0, description="Tokens shared by consecutive chunks.")
    max_chunks_per_document: int = Field(
        5000, ge=1, description="Most chunks one file may make (about 2.5 million characters of "
        "prose at 128 tokens a chunk); a file that needs more is refused (too_many_chunks) "
        "before any of it is embedded, so one huge file cannot hold the embedder for minutes.",
    )

    @field_validator("overlap_tokens")
    @classmethod
    def _overlap_below_size(cls, v: int, info: object) -> int:
        data = getattr(info, "data", {}) or {}
        if v >= data.get("max_tokens", 128):
            raise ValueError("overlap_tokens must be smaller than max_tokens")
        return v


class ParseSettings(BaseModel):
    """Limits on what parsing one uploaded file may cost; a file past any of them is refused."""

    workers: int = Field(
        2, ge=1, le=64, description="Parser processes kept running (files parsed at once); "
        "each is a separate process so a hostile file can be stopped without the server.",
    )
    prestart: bool = Field(
        True, description="Start the parser processes with the server or worker, not at the "
        "first upload (each takes ~0.3 s of CPU to start).",
    )
    timeout_s: float = Field(
        30, gt=0, description="Time one file may take to parse; past it the parser process is "
        "killed and the file refused (parse_timeout).",
    )
    memory_limit_mb: int = Field(
        1024, ge=128, description="Address-space ceiling of a parser process (RLIMIT_AS); a "
        "file that needs more is refused (parse_memory).",
    )
    nice: int = Field(
        0, ge=0, le=19, description="How much lower than the server's the CPU priority of "
        "parser processes is (os.nice, 0-19): parsing and chunking uploads wait while the "
        "server answers questions, but also while it embeds other ingestions; 0 runs them at "
        "the server's priority.",
    )
    cancel_grace_s: float = Field(
        0.5, ge=0, description="A parse or chunking whose caller went away (the client left, "
        "the task was cancelled) may finish within this many seconds, its result thrown away, "
        "and its parser process is kept; past it the process is killed. A replacement costs "
        "~0.5 s of CPU to start, so killing only pays for work that would take longer; 0 kills "
        "at once. Never past METIS_PARSE__TIMEOUT_S.",
    )
    recycle_rss_mb: int = Field(
        300, ge=32, description="A parser process whose peak resident memory went past this is "
        "replaced after its file, so one big file does not keep memory held.",
    )
    max_pages: int = Field(2000, ge=1, description="Most pages of a PDF.")
    max_text_chars: int = Field(
        0, ge=0, description="Most characters of text extracted from one file; 0 = derived from "
        "the chunk limit: METIS_CHUNK__MAX_CHUNKS_PER_DOCUMENT x METIS_CHUNK__MAX_TOKENS x 8 "
        "characters a token (5,120,000 by default), so prose the chunk limit takes is not "
        "refused at parse time.",
    )
    max_unzipped_mb: float = Field(
        200, gt=0, description="Most bytes a DOCX may expand to when unzipped, all parts together "
        "(counted while decompressing, never taken from the zip directory).",
    )
    max_compression_ratio: float = Field(
        100, gt=1, description="Most a DOCX part over 1 MB unzipped may expand relative to its "
        "compressed size (text XML reaches 10-30; zip bombs reach 1000).",
    )
    max_zip_entries: int = Field(5000, ge=10, description="Most files inside a DOCX archive.")
    max_html_depth: int = Field(
        1000, ge=16, description="Most levels elements of an HTML page may nest (the HTML "
        "parser's time grows with the square of the depth: 20,000 levels took 1.3 s).",
    )


class RetrievalSettings(BaseModel):
    top_k: int = Field(5, ge=1, le=50, description="Chunks cited in an answer by default.")
    hybrid: bool = Field(
        True, description="Fuse full-text (FTS5 / tsvector) and dense results (else dense only)."
    )
    candidates: int = Field(40, ge=1, le=1000, description="Candidates per leg before fusion.")
    fusion: Literal["terms", "convex", "rrf"] = Field(
        "terms", description="terms = cosine + term_weight x share of the query's words in the "
        "chunk + name_weight x share in its file name + phrase_weight x share of its word "
        "pairs in the chunk, over both legs' candidates; convex = "
        "dense_weight x min-max(cosine) + the rest x min-max(full-text score); rrf = reciprocal "
        "rank fusion. Chosen by benchmarks/bench_retrieval.py (README: Retrieval quality)."
    )
    term_weight: float = Field(
        0.1, ge=0, le=1, description="fusion=terms: bonus for a chunk holding all the query's "
        "content words."
    )
    name_weight: float = Field(
        0.05, ge=0, le=1, description="fusion=terms: bonus for a file name holding all the "
        "query's content words."
    )
    phrase_weight: float = Field(
        0.3, ge=0, le=1, description="fusion=terms: bonus for a chunk holding all the query's "
        "adjacent word pairs (a pasted line, an exact title), or a table row keyed by a query "
        "word found in no other candidate."
    )
    dense_weight: float = Field(
        0.7, ge=0, le=1, description="fusion=convex: share of the dense leg."
    )
    rrf_k: int = Field(60, ge=1, description="Reciprocal rank fusion constant (fusion=rrf).")
    chunks_per_document: int = Field(
        3, ge=1, le=20, description="Chunks shown per document when results are grouped by "
        "document (group_by=document)."
    )
    ef_search: int = Field(
        96, ge=10, description="HNSW search breadth (recall vs latency): hnswlib's ef, pgvector's "
        "hnsw.ef_search (at most 1000)."
    )
    history_turns: int = Field(
        4, ge=0, description="Earlier messages of a conversation given to the LLM."
    )
    fulltext_budget_ms: float = Field(
        1000, gt=0, description="Time the full-text leg may take (from the start of retrieval) "
        "before the answer goes on with dense results only and a warning (300 ms fired under "
        "the mixed load test on 2 busy cores: that was contention, not a stuck search).",
    )


class LLMFallback(BaseModel):
    """One more provider of the chain; unset fields are the primary provider's."""

    provider: Literal["ollama", "openai"]
    url: str = ""
    model: str = ""
    api_key: str = ""
    timeout_s: float | None = Field(None, gt=0)
    requests_per_minute: float = Field(0, ge=0)
    tokens_per_minute: float = Field(0, ge=0)

    def overrides(self) -> dict[str, object]:
        """The fields of `LLMSettings` this provider sets (the rest come from the primary)."""
        given = {"provider": self.provider, "url": self.url, "model": self.model,
                 "api_key": self.api_key, "timeout_s": self.timeout_s}
        return {k: v for k, v in given.items() if v not in ("", None)} | {"fallbacks": []}


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
    requests_per_minute: float = Field(
        0, ge=0, description="Outbound request budget of this provider; 0 = no limit."
    )
    tokens_per_minute: float = Field(
        0, ge=0, description="Outbound token budget (prompt + max_tokens, settled with the real "
        "usage); 0 = no limit.",
    )
    fallbacks: list[LLMFallback] = Field(
        default=[], description="Providers tried in order when the one before times out, "
        "answers 5xx or 429, or is unreachable. JSON list of objects with provider, url, model, "
        "api_key, timeout_s, requests_per_minute, tokens_per_minute (TOML: [[llm.fallbacks]]).",
    )


class ConversationSettings(BaseModel):
    window_ms: float = Field(
        5.0, ge=0, le=1000, description="Messages of concurrent answers are committed together "
        "at most this long after the answer (group commit).",
    )
    durable: bool = Field(
        False, description="Answer only once the question and answer are committed. Off: they "
        "are committed within window_ms after the answer, so a crash can lose that window's "
        "messages (never documents); a cached answer then costs no database write.",
    )
    max_pending: int = Field(
        10_000, ge=1, description="Messages queued at most while the database is slow or down; "
        "beyond it, answers wait, first come first served, until the writer takes a batch.",
    )
    max_batch: int = Field(
        2_000, ge=1, description="Messages written per transaction at most: a longer queue is "
        "written in several, so answers waiting for room are let in every few milliseconds.",
    )


class CacheSettings(BaseModel):
    enabled: bool = Field(True, description="Master switch of every cache level.")
    backend: Literal["disk", "redis", "postgres", "memory"] = Field(
        "disk",
        description="Shared tier behind the in-process memory tier: disk (SQLite under the data "
        "dir, survives restarts), redis (shared by every server), postgres (tables in the "
        "PostgreSQL database of METIS_DATABASE_URL, shared by every server), or memory only.",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Used when backend=redis.")
    redis_key_prefix: str = Field(
        "metis:cache:", min_length=1, description="Prefix of every key and of the invalidation "
        "channel in Redis: servers that share a cache use the same one; deployments that share "
        "one Redis use different ones.",
    )
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
    tool_ttl_s: float = Field(
        3600, gt=0, description="Agent tool results whose tool declares no TTL of its own."
    )
    semantic_max_error: float = Field(
        0.01, ge=0, lt=1, description="Semantic level: the highest share of semantic hits you "
        "accept answering another question (1 - precision). The decision's threshold is the "
        "lowest whose 95% upper confidence bound on that share, measured out of fold on labelled "
        "calibration pairs, stays below it (README, Caching); the shipped calibration meets none "
        "under 0.1, so at the default the level serves nothing. 0 switches the level off."
    )
    semantic_threshold: float | None = Field(
        None, gt=0, le=1, description="Deprecated and ignored (the cosine threshold before "
        "semantic_max_error): a warning is logged when set."
    )
    semantic_verify_threshold: float | None = Field(
        None, gt=0, le=1, description="Deprecated and ignored (the 'same top source' band, "
        "which proved nothing): a warning is logged when set."
    )
    semantic_search: Literal["auto", "mirror"] = Field(
        "mirror", description="mirror = every server mirrors the semantic lists in memory and "
        "catches up with one read per lookup (always so on redis and disk); auto = where the "
        "backend can rank a list itself (postgres with pgvector), each lookup fetches its 4 "
        "nearest and nothing is mirrored: no whole-list read on a server's first lookup, but "
        "slower per lookup at every list size measured (benchmarks/bench_cache_backends.py).",
    )
    semantic_max_entries: int = Field(
        50_000, ge=1, description="Questions kept in the semantic indexes, all namespaces."
    )
    semantic_warm_wait_ms: float = Field(
        5.0, ge=0, description="Semantic level on redis or disk (mirrored lists): how long a "
        "server's first lookup in a partition waits for its first read of the shared list "
        "before it answers from what this server holds (a miss while the read goes on in the "
        "background; a first read of 10,000 questions took 13 s)."
    )
    price_per_1k_tokens: float = Field(
        0.002, ge=0, description="LLM price used to estimate the cost saved, per 1k tokens."
    )
    invalidations_per_min: int = Field(
        30, ge=1, description="Rate limit of DELETE /api/cache per client."
    )


class ObservabilitySettings(BaseModel):
    access_log: bool = Field(
        True, description="Log one line per HTTP request (method, route, status, duration)."
    )
    slow_query_ms: float = Field(
        100, gt=0, description="SQL statements slower than this are logged (parameter shapes, "
        "never values) and counted in metis_db_slow_queries_total.",
    )
    window_s: int = Field(
        300, ge=10, le=3600, description="Rolling window behind /api/metrics/summary and the "
        "dashboard, in seconds.",
    )
    sample_interval_s: float = Field(
        2.0, ge=0.1, le=60, description="Step of the dashboard's series: process, cache and "
        "task gauges are sampled this often.",
    )
    alert_p95_ms: float = Field(
        2000, gt=0, description="Alert when the p95 request latency over the last minute is "
        "above this.",
    )
    alert_error_ratio: float = Field(
        0.05, gt=0, le=1, description="Alert when the share of 5xx responses over the last "
        "minute is above this.",
    )
    alert_queue_depth: int = Field(
        1000, ge=1, description="Alert when the task queue holds more tasks than this."
    )
    otlp_endpoint: str = Field(
        "", description="OpenTelemetry collector (OTLP/HTTP base URL, e.g. http://otel:4318): "
        "traces are exported there. Empty = the standard OTEL_EXPORTER_OTLP_ENDPOINT if set, "
        "else tracing is off. Needs the otel extra.",
    )
    service_name: str = Field("metis", description="service.name of the exported traces.")
    trace_sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of traces recorded (a request continuing a "
        "client's trace follows the client's decision).",
    )


class CompressionSettings(BaseModel):
    enabled: bool = Field(True, description="Compress HTTP responses the client accepts "
                          "compressed (zstd, br, gzip); event streams never are.")
    min_bytes: int = Field(1024, ge=0, description="Smaller responses are sent as they are.")
    gzip_level: int = Field(6, ge=1, le=9, description="gzip level (1 fastest, 9 smallest).")
    zstd_level: int = Field(3, ge=1, le=19, description="zstd level (preferred when accepted).")


class BatchingSettings(BaseModel):
    enabled: bool = Field(
        True, description="Gather concurrent query embeddings into one model call: for a "
        "remote backend one HTTP call instead of many (benchmarks/bench_batching.py). The "
        "local model at one text per run (METIS_EMBED__LOCAL_BATCH_SIZE=1) gains nothing from "
        "it and is not batched.",
    )
    max_batch: int = Field(32, ge=1, le=1024, description="Most queries in one model call.")
    max_wait_ms: float = Field(
        0, ge=0, le=1000, description="How long a query waits for others to join its batch; "
        "0 = batch only what arrived while the model was busy (measured fastest).",
    )


class RateLimitSettings(BaseModel):
    max_retries: int = Field(
        4, ge=0, le=20, description="Retries of an LLM call answered 429 or 5xx, per provider."
    )
    backoff_base_s: float = Field(
        0.25, gt=0, description="First retry waits up to this (full jitter), doubling after."
    )
    backoff_max_s: float = Field(8.0, gt=0, description="Longest wait between two retries.")
    retry_budget_s: float = Field(
        30.0, gt=0, description="Retries stop when their waits would add up to more than this."
    )
    burst_requests: float = Field(
        1, ge=1, description="Requests a provider may get at once within its per-minute budget; "
        "1 spreads them evenly.",
    )
    min_rate_fraction: float = Field(
        0.125, gt=0, le=1, description="Repeated 429s halve a provider's rate down to this "
        "fraction of its budget.",
    )
    recovery_s: float = Field(
        60, gt=0, description="Time for a halved rate to grow back to the whole budget "
        "(linearly, from zero) once 429s stop.",
    )
    inbound_per_minute: float = Field(
        0, ge=0, description="Requests per minute per client (API key, else IP address) on "
        "/api; 0 = no limit.",
    )
    inbound_burst: float = Field(
        60, ge=1, description="Requests a client may send at once before the per-minute rate "
        "applies.",
    )
    max_in_flight: int = Field(
        0, ge=0, description="Most requests one server process handles at once; beyond it, "
        "503 overloaded with Retry-After at once (health checks and /metrics excepted), so "
        "admitted requests keep their latency under overload. 0 = no limit.",
    )
    max_loop_lag_ms: float = Field(
        0, ge=0, description="Refuse requests the same way while the server's event loop runs "
        "this late (sampled every 5 ms): under overload the queue forms before requests reach "
        "the app, where max_in_flight cannot see it. 0 = off.",
    )


class PostgresSettings(BaseModel):
    pool_size: int = Field(10, ge=1, description="PostgreSQL connections each Metis process keeps open.")
    max_overflow: int = Field(
        10, ge=0, description="Extra connections opened under load beyond pool_size, closed when idle."
    )
    pool_timeout_s: float = Field(
        10.0, gt=0, description="Wait for a free connection this long, then answer 503."
    )
    pool_recycle_s: float = Field(
        1800.0, gt=0, description="Reconnect connections older than this (proxies drop idle ones)."
    )
    pool_pre_ping: bool = Field(
        True, description="Test each connection with a round trip as it leaves the pool, so a "
        "restarted database fails no request; off saves that round trip on every checkout (a "
        "cached answer takes one), and statements on a dropped connection then fail once "
        "(collection lookups retry).",
    )
    hnsw_m: int = Field(
        16, ge=2, le=100, description="pgvector HNSW links per node; set when the index is created."
    )
    hnsw_ef_construction: int = Field(
        200, ge=8, le=1000,
        description="pgvector HNSW build breadth, set when the index is created: 200 gave "
        "recall@10 0.979 at ef 96 on real MiniLM vectors, pgvector's default 64 gave 0.944 "
        "(benchmarks/bench_pgvector.py).",
    )


class TaskSettings(BaseModel):
    backend: Literal["embedded", "celery"] = Field(
        "embedded",
        description="embedded = in-process asyncio engine (default); celery = Celery workers "
        "started with `metis worker` (install the `tasks` extra).",
    )
    concurrency: int = Field(4, ge=1, le=256, description="Most tasks running at once per process.")
    low_priority_max_defer_s: float = Field(
        300, ge=0, description="Embedded engine: a `low` task (a document's analysis) waits while "
        "a task of a higher priority runs in its process, at most this long; 0 = no waiting.",
    )
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
        90, gt=0, le=100, description="CPU use above which an alert is raised (the machine's) and "
        "concurrency is lowered (other processes' only: the machine's less this process's share).",
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


class QuotaSettings(BaseModel):
    """A tenant's limits; 0 = unlimited."""

    max_documents: int = Field(0, ge=0, description="Documents a tenant may store (0 = no limit).")
    max_storage_mb: float = Field(0, ge=0, description="Upload bytes a tenant may store, in MB.")
    questions_per_minute: float = Field(0, ge=0, description="Questions a tenant may ask a minute.")
    llm_tokens_per_day: int = Field(0, ge=0, description="LLM tokens a tenant may spend a UTC day.")


class KeyGrant(BaseModel):
    """What a key of METIS_API_KEYS's object form grants."""

    tenant: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
    role: Literal["reader", "writer", "admin", "operator"] = "reader"


class AuthSettings(BaseModel):
    protect_ops: bool | None = Field(
        None, description="Require a key for /metrics and the dashboard's data (an operator's) "
        "and /docs, /redoc, /openapi.json (an admin's); unset = yes whenever API keys are in use.",
    )
    scrape_token: str = Field(
        "", description="A token that also opens /metrics (Authorization: Bearer), for Prometheus.",
    )
    reload_s: float = Field(
        2.0, gt=0, description="How often the server re-reads the keys stored in the database.",
    )
    audit_window_ms: float = Field(
        200, gt=0, description="Audit records are written in batches, at most this late.",
    )
    trusted_proxies: list[str] = Field(
        default=[], description='Reverse proxies (addresses or CIDRs, JSON: ["10.0.0.0/8"]) '
        "whose X-Forwarded-For names the client in the audit log and per-IP rate limits; empty: "
        "the header is ignored, the connection's address counts.",
    )
    quotas: QuotaSettings = Field(QuotaSettings(), description="Every tenant's default quotas.")
    tenant_quotas: dict[str, QuotaSettings] = Field(
        default={}, description='Per-tenant overrides (JSON): {"acme": {"max_documents": 1000}}.',
    )
    quota_store: Literal["auto", "redis", "database", "memory"] = Field(
        "auto", description="Where quota counters live: redis or database (shared by every "
        "server), memory (this process); auto = redis when METIS_AUTH__QUOTA_REDIS_URL is set or "
        "the cache is on Redis, else the database.",
    )
    quota_redis_url: str = Field(
        "", description="Redis of the quota counters; empty = METIS_CACHE__REDIS_URL.",
    )
    quota_key_prefix: str = Field(
        "metis:quota:", max_length=60,
        description="Prefix of every quota counter's key (deployments sharing one Redis).",
    )
    quota_timeout_ms: float = Field(
        250, gt=0, description="A slower Redis call counts as an outage: the server counts "
        "locally until Redis answers again.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{entry[:60]!r} is not an IP address or CIDR") from None
        return value


class ToolSettings(BaseModel):
    """The agent's tools (agent.registry and its built-ins)."""

    timeout_s: float = Field(20, gt=0, description="One tool call is abandoned after this.")
    sql_url: str = Field(
        "", description="SQLAlchemy async URL of the database `sql_query` reads; empty: the "
        "tool answers that no database is configured."
    )
    sql_tables: list[str] = Field(
        default=[], description="Tables `sql_query` may read (JSON list). Empty: every table of "
        "`sql_url` except Metis's own, unless sql_allow_metis_tables."
    )
    sql_allow_metis_tables: bool = Field(
        False, description="Let `sql_query` read Metis's own tables (collections, documents...)."
    )
    sql_max_rows: int = Field(200, ge=1, le=10_000, description="Rows `sql_query` returns at most.")
    sql_timeout_s: float = Field(5, gt=0, description="One `sql_query` statement's time limit.")


class AnalysisSettings(BaseModel):
    """Document analysis at ingestion: type, language, keywords, summary."""

    enabled: bool = Field(True, description="Analyse every ingested document.")
    use_llm: bool = Field(
        True, description="Ask the configured LLM (structured JSON); without one, or when it "
        "fails, the offline methods answer."
    )
    max_keywords: int = Field(8, ge=1, le=50, description="Keywords kept per document.")
    summary_sentences: int = Field(3, ge=1, le=20, description="Sentences of a summary.")


class AgentSettings(BaseModel):
    """Agent mode: query analysis, plans run as graphs, synthesis, evaluation, the audit log."""

    engine: Literal["langgraph", "asyncio"] = Field(
        "langgraph", description="What runs a plan: LangGraph (pip install 'metis-rag[agent]') "
        "or plain asyncio tasks."
    )
    planner: Literal["auto", "rules", "llm"] = Field(
        "auto", description="auto = the LLM plans when one is configured (rules when its plan "
        "is invalid); rules = the offline planner only."
    )
    judge: Literal["auto", "offline", "llm"] = Field(
        "auto", description="Who scores answers: auto = the LLM as judge when one is "
        "configured, else the offline evaluator."
    )
    step_timeout_s: float = Field(20, gt=0, description="A plan step is abandoned after this.")
    plan_timeout_s: float = Field(
        60, gt=0, description="Steps still running this long after the plan started are cancelled."
    )
    max_steps: int = Field(12, ge=1, le=16, description="Longest plan that runs.")
    refine_below: float = Field(
        0.6, ge=0, le=1, description="An answer whose lowest score is below this is refined."
    )
    max_refinements: int = Field(1, ge=0, le=5, description="Refinement rounds at most.")


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
    sqlite_busy_timeout_s: float = Field(
        10.0, gt=0, le=600,
        description="SQLite: how long a write waits for another connection's write to finish "
        "before giving up; a request that gives up answers 503 `database_busy` with "
        "Retry-After, having stored nothing.",
    )
    host: str = Field("127.0.0.1", description="Address `metis serve` binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port `metis serve` binds.")
    max_upload_mb: float = Field(50, gt=0, description="Largest accepted upload, in MB.")
    default_collection: str = Field("default", description="Collection used when none is named.")
    log_level: str = Field("info", description="Log level of the server.")
    log_format: Literal["json", "console"] = Field(
        "json", description="json = one JSON object per line; console = coloured, for people."
    )
    vector_store: Literal["auto", "hnsw", "pgvector"] = Field(
        "auto",
        description="auto = pgvector when the database is PostgreSQL and has it (migration 0003 "
        "adds it wherever the extension exists), else the embedded HNSW index under the data dir.",
    )
    postgres: PostgresSettings = PostgresSettings()
    embed: EmbedSettings = EmbedSettings()
    chunk: ChunkSettings = ChunkSettings()
    parse: ParseSettings = ParseSettings()

    @model_validator(mode="after")
    def _derive_text_limit(self) -> Settings:
        # English prose is about 4 characters a token of the embedding model's tokenizer. Text
        # past twice that makes more chunks than the chunk limit allows (the task would refuse
        # it with too_many_chunks after parsing it whole) unless its tokens average over 8
        # characters, which only long identifiers or encoded data do.
        if not self.parse.max_text_chars:
            self.parse = self.parse.model_copy(update={"max_text_chars": (
                self.chunk.max_chunks_per_document * self.chunk.max_tokens * CHARS_PER_TOKEN)})
        return self
    retrieval: RetrievalSettings = RetrievalSettings()
    llm: LLMSettings = LLMSettings()
    cache: CacheSettings = CacheSettings()
    conversations: ConversationSettings = ConversationSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    compression: CompressionSettings = CompressionSettings()
    batching: BatchingSettings = BatchingSettings()
    ratelimit: RateLimitSettings = RateLimitSettings()
    api_keys: list[str] | dict[str, KeyGrant] = Field(
        default=[], description="When set, every /api request but /api/health needs a key in "
        "X-API-Key or Authorization: Bearer. A JSON list: admin keys of tenant `default`; an "
        'object: {"<key>": {"tenant": "acme", "role": "reader|writer|admin"}}. Keys made by '
        "`metis keys create` live (hashed) in the database.",
    )
    auth: AuthSettings = AuthSettings()
    tasks: TaskSettings = TaskSettings()
    tools: ToolSettings = ToolSettings()
    analysis: AnalysisSettings = AnalysisSettings()
    agent: AgentSettings = AgentSettings()

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

    @model_validator(mode="after")
    def _postgres_cache_needs_postgres(self) -> Settings:
        if self.cache.backend == "postgres" and self.is_sqlite:
            raise ValueError("METIS_CACHE__BACKEND=postgres needs a PostgreSQL METIS_DATABASE_URL")
        return self

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

    @property
    def sqlite_path(self) -> Path | None:
        """The database file when the database is SQLite (not in memory), else None."""
        if not self.is_sqlite:
            return None
        from sqlalchemy.engine import make_url

        database = make_url(self.sqlalchemy_url).database
        return Path(database) if database and database != ":memory:" else None
