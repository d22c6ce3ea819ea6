"""`metis ask --agent` from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metis_rag.cli import app as cli_app
from metis_rag.config import Settings
from tests.agent.passages import PROTOCOLS, SERVICES

pytestmark = pytest.mark.slow


def cli(settings: Settings, *args: str) -> str:
    result = CliRunner().invoke(cli_app, [*args, "--data-dir", str(settings.data_dir)],
                                catch_exceptions=False,
                                env={"METIS_DATABASE_URL": settings.database_url})
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
