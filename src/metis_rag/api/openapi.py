"""The error answers every route declares in the OpenAPI schema: the one `ErrorBody` shape
that `install_error_handlers` renders, for any 4xx and 5xx (codes listed in the README).

Declaring 4XX also stops FastAPI from documenting its default 422 body, which Metis never sends.
"""

from __future__ import annotations

from typing import Any

from ..schemas import ErrorBody

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": "Refused: a stable `code` and a human `message`."},
    "5XX": {"model": ErrorBody, "description": "Failed or unavailable (no traceback is sent)."},
}
