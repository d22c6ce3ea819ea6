"""A SQLite older than Metis's statements need is refused at start-up with a clear message."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from metis_rag.config import Settings
from metis_rag.errors import MissingDependency
from metis_rag.store import db


def test_this_machines_sqlite_is_new_enough() -> None:
    assert sqlite3.sqlite_version_info >= db.MIN_SQLITE
    db.check_sqlite_version()


def test_an_older_sqlite_is_refused_before_any_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(db.sqlite3, "sqlite_version_info", (3, 34, 1))
    with pytest.raises(MissingDependency) as caught:
        db.create_engine(Settings(data_dir=tmp_path))
    assert caught.value.code == "missing_dependency"
    assert "3.34.1" in str(caught.value) and "3.35.0" in str(caught.value)
    assert "METIS_DATABASE_URL" in str(caught.value)


def test_postgres_does_not_care(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(db.sqlite3, "sqlite_version_info", (3, 7, 0))
    settings = Settings(data_dir=tmp_path, database_url="postgresql+asyncpg://127.0.0.1/test")
    db.create_engine(settings).sync_engine.dispose()
