"""Every error Metis raises on purpose. Each has a stable `code`, an HTTP `status` and a human message.

MetisError
├── NotFound                      404  not_found (collection, document, conversation, task)
│   └── ToolNotFound              404  tool_not_found (no agent tool of that name)
├── InvalidInput                  422  invalid_input
│   └── InvalidDocument           422  empty_document | corrupt_document | encrypted_document |
│       │                              parser_crashed (the file killed its parser process)
│       └── ParseLimitExceeded    422  archive_too_large | compression_ratio | too_many_parts |
│                                      unsafe_xml | too_many_pages | too_much_text |
│                                      too_deeply_nested | parse_timeout | parse_memory |
│                                      too_many_chunks (METIS_CHUNK__MAX_CHUNKS_PER_DOCUMENT)
├── UnsupportedMediaType          415  unsupported_media_type
│   └── ContentMismatch           415  content_mismatch (the bytes are not what the name or
│                                      content type says)
├── PayloadTooLarge               413  payload_too_large
├── Conflict                      409  conflict
├── Unauthorized                  401  unauthorized (API keys are configured; none or a wrong one)
├── Forbidden                     403  forbidden (the key's role does not allow it)
├── RateLimited                   429  rate_limited
│   └── QuotaExceeded             429|413  quota_exceeded (a tenant's quota; which, in the message)
├── ProviderError                 502  provider_error (LLM or embedding backend failed)
│   └── ProviderTimeout           504  provider_timeout
├── ServiceUnavailable            503  service_unavailable
│   ├── Overloaded                503  overloaded (METIS_RATELIMIT__MAX_IN_FLIGHT requests at once)
│   └── DatabaseBusy              503  database_busy (SQLite's write lock stayed taken for
│                                      METIS_SQLITE_BUSY_TIMEOUT_S, or no pooled PostgreSQL
│                                      connection came free; nothing was written)
├── CorruptEntry                  500  cache_corrupt_entry (never reaches a client: dropped)
├── MissingDependency             500  missing_dependency (an optional extra is not installed,
│                                      or Python's SQLite is older than 3.35)
├── PermanentError                422  task_failed (a task that retrying cannot fix fails at once)
├── ClientDisconnected            499  client_disconnected (the client left; nobody reads it)
└── ChunkingStopped               499  chunking_stopped (its ingestion was cancelled; nobody reads it)

One handler in `metis_rag.api` turns these into JSON bodies ``{"code", "message"}``;
anything else becomes a 500 ``internal_error`` with no traceback in the body.
"""

from __future__ import annotations

from typing import Any


class MetisError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class PermanentError(MetisError):
    """A task failure that retrying cannot fix (bad input); the task fails at once."""

    status = 422
    code = "task_failed"


class NotFound(MetisError):
    status = 404
    code = "not_found"


class ToolNotFound(NotFound):
    code = "tool_not_found"


class InvalidInput(MetisError):
    status = 422
    code = "invalid_input"


class InvalidDocument(InvalidInput):
    """A file we support whose content we cannot use: empty, corrupt or encrypted."""

    code = "corrupt_document"


class ParseLimitExceeded(InvalidDocument):
    """A file that would cost more to parse than METIS_PARSE__* allows: a zip bomb, a huge
    page count, a parse that runs out of time or memory. Refused, never partly indexed."""

    code = "parse_limit"


class UnsupportedMediaType(MetisError):
    status = 415
    code = "unsupported_media_type"


class ContentMismatch(UnsupportedMediaType):
    """The bytes are another kind of file than the extension or content type declares."""

    code = "content_mismatch"


class PayloadTooLarge(MetisError):
    status = 413
    code = "payload_too_large"


class Conflict(MetisError):
    status = 409
    code = "conflict"


class Unauthorized(MetisError):
    status = 401
    code = "unauthorized"


class Forbidden(MetisError):
    status = 403
    code = "forbidden"


class RateLimited(MetisError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float | None = 1.0, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after_s = retry_after_s


class QuotaExceeded(RateLimited):
    """429 for the rate quotas (with Retry-After), 413 for the storage ones (without)."""

    code = "quota_exceeded"

    def __init__(self, message: str, *, quota: str, retry_after_s: float | None = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s, quota=quota)
        self.status = 429 if retry_after_s is not None else 413


class ProviderError(MetisError):
    status = 502
    code = "provider_error"

    def __init__(
        self, message: str, *, upstream_status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
        self.retry_after_s = retry_after_s


class ProviderTimeout(ProviderError):
    status = 504
    code = "provider_timeout"


class ServiceUnavailable(MetisError):
    status = 503
    code = "service_unavailable"


class Overloaded(ServiceUnavailable):
    """More requests at once than the admission limit: refused at once, with Retry-After."""

    code = "overloaded"


class DatabaseBusy(ServiceUnavailable):
    """Other writes kept the database from taking this one in time; its transaction was rolled
    back whole, so asking again (after Retry-After) is safe."""

    code = "database_busy"
    retry_after_s = 1.0


class CorruptEntry(MetisError):
    """A cached entry that cannot be decoded; the cache drops it and counts it, never returns it."""

    code = "cache_corrupt_entry"


class MissingDependency(MetisError):
    code = "missing_dependency"

    def __init__(self, package: str, extra: str, *, message: str = "") -> None:
        super().__init__(
            message or f"{package} is not installed; run: pip install 'metis-rag[{extra}]'",
        )


class ClientDisconnected(MetisError):
    """The client went away mid-request; its work was abandoned (nginx's 499)."""

    status = 499
    code = "client_disconnected"


class ChunkingStopped(MetisError):
    """Chunking gave up because the ingestion that asked for it was cancelled or timed out."""

    status = 499
    code = "chunking_stopped"
