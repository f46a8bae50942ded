"""Routes: operations (to be filled in by its subsystem)."""

from __future__ import annotations

from fastapi import FastAPI

from loopml.platform import Platform


def install(app: FastAPI, platform: Platform) -> None:
    return None
