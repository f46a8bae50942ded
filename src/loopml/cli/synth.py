"""`loopml synth` commands (to be filled in by their subsystem)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    return None
