"""The CLI end to end: ingest real files of every format, ask, list, show, delete."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metis_rag.cli import app
from tests.files import FACTS, write_all

pytestmark = pytest.mark.slow


def run(*args: str, database_url: str = "") -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False,
                                env={"METIS_DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.databases
def test_ingest_ask_and_manage_documents(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    dd = ["--data-dir", str(settings.data_dir)]
    cli = functools.partial(run, database_url=settings.database_url)
    docs = tmp_path / "docs"
    write_all(docs / "handbook")
    (docs / "notes.bin").write_bytes(b"\x00\x01")  # unsupported extension: not picked up

    out = cli("ingest", str(docs), "--collection", "hb", "--tags", "v1", *dd)
    assert "5 files (5 new" in out and "chunks/s" in out
    again = json.loads(cli("ingest", str(docs), "--collection", "hb", "--json", *dd))
    assert again["duplicates"] == 5 and again["chunks"] == 0

    for filename, question, fact, page, _section in FACTS:
        answer = json.loads(cli("ask", question, "--collection", "hb", "--json", *dd))
        assert fact in answer["answer"]
        assert answer["citations"][0]["filename"] == filename
        assert answer["citations"][0]["page"] == page
        assert answer["citations"][0]["folder"] == "handbook"

    text = cli("ask", FACTS[3][1], "--collection", "hb", *dd)
    assert "[1] facilities.pdf, p. 2" in text

    listed = json.loads(cli("docs", "list", "--collection", "hb", "--json", *dd))
    assert listed["total"] == 5
    doc_id = next(d["id"] for d in listed["items"] if d["filename"] == "facilities.pdf")
    shown = json.loads(cli("docs", "show", str(doc_id), "--chunks", *dd))
    assert shown["filename"] == "facilities.pdf" and shown["chunks"]
    cli("docs", "delete", str(doc_id), *dd)
    answer = json.loads(cli("ask", FACTS[3][1], "--collection", "hb", "--json", *dd))
    assert all(c["filename"] != "facilities.pdf" for c in answer["citations"])


def test_errors_are_sentences_not_tracebacks(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    result = CliRunner().invoke(
        app, ["ask", "hi", "--collection", "nope", "--data-dir", str(settings.data_dir)]
    )
    assert result.exit_code == 2
    assert "collection_not_found" in result.output and "Traceback" not in result.output
