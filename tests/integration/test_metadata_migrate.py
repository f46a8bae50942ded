"""Migrations log what they change, not alembic's start-up chatter."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from loopml.metadata.db import Database


def test_migrate_logs_upgrades_once_and_no_chatter(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = Database(f"sqlite:///{tmp_path / 'metadata.db'}")
    with caplog.at_level(logging.INFO):
        db.migrate()
        first = [r.getMessage() for r in caplog.records if r.name.startswith("alembic")]
        caplog.clear()
        db.migrate()
        second = [r.getMessage() for r in caplog.records if r.name.startswith("alembic")]
    assert any(m.startswith("Running upgrade") for m in first), first
    assert not [m for m in first + second if m.startswith(("setup plugin", "Context impl", "Will assume"))]
    assert second == []  # nothing to do, nothing said
