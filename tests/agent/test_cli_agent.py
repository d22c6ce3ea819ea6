"""`metis ask --agent` from the CLI."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metis_rag.cli import app as cli_app
from metis_rag.config import Settings
from metis_rag.devtools.fake_llm import FakeLLMServer
from tests.agent.passages import PROTOCOLS, SERVICES

pytestmark = pytest.mark.slow


def cli(settings: Settings, *args: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(cli_app, [*args, "--data-dir", str(settings.data_dir)],
                                catch_exceptions=False,
                                env={"METIS_DATABASE_URL": settings.database_url, **(env or {})})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_ask_agent_plans_and_prints_the_agent_block(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "services.txt").write_text(SERVICES)
    (tmp_path / "protocols.txt").write_text(PROTOCOLS)
    cli(settings, "ingest", str(tmp_path / "services.txt"), str(tmp_path / "protocols.txt"),
        "-c", "net")
    out = json.loads(cli(settings, "ask", "Which has the higher port, imaps or pop3s?",
                         "-c", "net", "--agent", "--json"))
    assert out["agent"]["analysis"] == "comparison"
    assert "pop3s has the highest port (995)" in out["answer"]
    plain = json.loads(cli(settings, "ask", "Which has the higher port, imaps or pop3s?",
                           "-c", "net", "--json"))
    assert plain["agent"] is None  # without --agent: the fast path


def test_ingest_waits_for_the_llms_analysis_task(settings: Settings, tmp_path: Path,
                                                 fake_server: FakeLLMServer) -> None:
    # The analysis by an LLM is a task of its own; `metis ingest` runs the engine, so it
    # waits for that task too instead of exiting with the document unanalysed.
    names = [f"services{i}.txt" for i in range(3)]
    for i, name in enumerate(names):  # different bytes: three documents, not duplicates
        (tmp_path / name).write_text(f"{SERVICES}\nlocal{i}\t{9000 + i}/tcp\n")
    fake_server.reset(config=True)
    fake_server.configure(answer='{"type": "data", "language": "en", "topics": ["ports"], '
                                 '"summary": "Port numbers of network services."}',
                          latency_ms=400)  # the model is slower than an ingestion here
    env = {"METIS_LLM__PROVIDER": "openai", "METIS_LLM__URL": fake_server.url,
           "METIS_LLM__MODEL": "m"}
    try:
        cli(settings, "ingest", *(str(tmp_path / n) for n in names), "-c", "net", env=env)
    finally:
        fake_server.reset(config=True)
    # Read straight from the database: another CLI command would start an engine of its own.
    assert settings.sqlite_path is not None
    with sqlite3.connect(settings.sqlite_path) as db:
        rows = db.execute("SELECT topics, analysis FROM documents").fetchall()
    assert len(rows) == 3
    assert all(json.loads(topics) == ["ports"] and json.loads(analysis)["method"] == "llm"
               for topics, analysis in rows), rows
