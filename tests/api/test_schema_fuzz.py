"""Schemathesis against the app's own OpenAPI schema, in process: every operation gets bounded
generated requests; none may answer 5xx or break its declared response schema."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from metis_rag.app import create_app
from metis_rag.config import Settings

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
EXAMPLES = int(os.environ.get("METIS_FUZZ_EXAMPLES", "30"))


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory, prepared_models: Path) -> Iterator[object]:
    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    data_dir.mkdir()
    (data_dir / "models").symlink_to(prepared_models, target_is_directory=True)
    app = create_app(Settings(data_dir=data_dir, database_url="",
                              observability={"access_log": False}))  # type: ignore[arg-type]
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    asgi.shutdown_lifespans()  # the lifespan runs in schemathesis' own event loop thread


def _fuzz(case_strategy: object) -> list[str]:
    """Runs one operation's examples; returns the failures (hypothesis shrinks each first)."""
    failures: list[str] = []

    @given(case=case_strategy)
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def run(case: schemathesis.Case) -> None:
        try:
            case.call_and_validate(checks=CHECKS)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # schemathesis' FailureGroup; reported all at once below
            failures.append(f"{case.method} {case.path}: {str(exc)[:1500]}")

    run()
    return failures


def test_every_operation_conforms_to_its_schema(api_schema) -> None:
    # One test over all operations: schemathesis' per-operation pytest items need a pytest
    # version it supports, and one app (one lifespan) serves every operation this way.
    failures: list[str] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        failures.extend(_fuzz(operation.as_strategy())[:3])
    assert not failures, "\n\n".join(failures)
