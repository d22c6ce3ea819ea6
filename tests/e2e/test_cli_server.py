"""`metis cache` through a running server that needs API keys: the key goes with the request,
from --api-key or METIS_API_KEY, and a refusal is the server's sentence, not a traceback."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from typer.testing import CliRunner

from metis_rag.app import create_app
from metis_rag.cli import app as cli_app
from metis_rag.config import Settings
from tests.observability.server import ThreadedServer

pytestmark = pytest.mark.slow

OPERATOR, READER = "key-operator-cli", "key-reader-cli"


def metis(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli_app, list(args), env={"METIS_API_KEY": "", **(env or {})})
    return result.exit_code, result.output


def test_cache_commands_send_the_api_key(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(api_keys={OPERATOR: {"tenant": "default", "role": "operator"},
                                       READER: {"tenant": "default", "role": "reader"}})
    with ThreadedServer(create_app(settings)) as server:
        stats = ("cache", "stats", "--server", server.url)

        code, out = metis(*stats)
        assert code == 2 and "unauthorized" in out and "needs an API key" in out

        code, out = metis(*stats, "--api-key", OPERATOR)
        assert code == 0, out
        assert "LLM calls saved: 0, tokens saved: 0" in out  # the stats the server sent

        code, out = metis(*stats, env={"METIS_API_KEY": OPERATOR})
        assert code == 0, out
        assert "LLM calls saved" in out

        code, out = metis(*stats, "--api-key", READER)
        assert code == 2 and "forbidden" in out

        code, out = metis("cache", "clear", "--server", server.url, "--api-key", OPERATOR)
        assert code == 0 and "cache cleared: all" in out
        code, out = metis("cache", "clear", "--server", server.url)
        assert code == 2 and "unauthorized" in out
