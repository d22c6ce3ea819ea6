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


def test_cache_stats_fit_80_columns(make_settings: Callable[..., Settings]) -> None:
    with ThreadedServer(create_app(make_settings())) as server:
        code, out = metis("cache", "stats", "--server", server.url, env={"COLUMNS": "80"})
    assert code == 0, out
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80, out
    # Nothing wrapped: every header on one line, every level on one line of each table.
    for header in (("level", "hits", "misses", "hit ratio", "entries", "bytes", "errors"),
                   ("level", "mean hit ms", "mean miss ms", "saved ms"),
                   ("tier", "entries", "bytes", "evictions", "errors", "healthy")):
        assert any(all(h in line for h in header) for line in lines), (header, out)
    for level in ("exact", "semantic", "retrieval", "llm", "embedding", "document", "tool"):
        rows = [line for line in lines if f" {level} " in line]
        assert len(rows) == 2 and "%" in rows[0] and "." in rows[1], (level, out)
    assert "LLM calls saved: 0, tokens saved: 0, estimated cost saved: $0.0000" in out


def test_cache_stats_tables_fit_80_columns_with_large_counts() -> None:
    from io import StringIO

    from rich.console import Console

    from metis_rag.cli.cache import stats_tables

    big = {"hits": 12_345_678, "misses": 9_876_543, "hit_ratio": 0.5555, "entries": 1_234_567,
           "bytes": 9_876_543_210, "errors": 12_345, "mean_hit_ms": 1234.56,
           "mean_miss_ms": 98765.43, "saved_ms": 123_456_789.0}
    stats = {"levels": dict.fromkeys(("exact", "semantic", "retrieval", "llm", "embedding",
                                      "document", "tool"), big),
             "tiers": [{"backend": backend, "entries": 1_234_567, "bytes": 9_876_543_210,
                        "evictions": 1_234_567, "errors": 12_345, "healthy": True}
                       for backend in ("MemoryBackend", "RedisBackend", "PostgresBackend")]}
    out = StringIO()
    console = Console(file=out, width=80, color_system=None)
    for table in stats_tables(stats):
        console.print(table)
    lines = out.getvalue().splitlines()
    assert max(map(len, lines)) <= 80
    # Each row on one line: its numbers were not wrapped onto a second line.
    assert sum("9876543210" in line for line in lines) == 7 + 3, out.getvalue()
    assert sum("98765.43" in line for line in lines) == 7, out.getvalue()
