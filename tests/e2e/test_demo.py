"""`loopml demo` (what `make demo` runs) end to end, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb


def _demo(home: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    env.pop("LOOPML_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "loopml", "demo", "--home", str(home), "--events", "1000", *extra],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def test_demo_runs_every_step_and_leaves_its_state(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    done = _demo(home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo finished: every step checked" in done.stdout
    assert "identical to the model in this process" in done.stdout
    # what to do next: commands that run as printed (the home is the demo's own)
    assert f"loopml server --home {home.resolve()} &" in done.stdout
    assert "loopml models list --project demo-project" in done.stdout
    # the state is real and stays behind: the warehouse holds the ingested events and the scores
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    finally:
        con.close()
    assert any("cloud_run" in n for n in names), names
    # a second run starts from a clean slate in the same directory
    again = _demo(home)
    assert again.returncode == 0, again.stdout + again.stderr


def test_demo_refuses_a_directory_that_is_not_its_own(tmp_path: Path) -> None:
    home = tmp_path / "precious"
    home.mkdir()
    (home / "data.txt").write_text("keep me")
    done = _demo(home)
    assert done.returncode == 1
    assert "is not a demo home" in done.stdout
    assert (home / "data.txt").read_text() == "keep me"
