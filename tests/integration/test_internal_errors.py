"""An unexpected server error answers a 500 that names an incident id, not the exception's text."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import httpx
import pytest

from loopml.api.app import create_app
from loopml.config import Settings
from loopml.platform import Platform


def test_unexpected_error_is_a_500_with_an_incident_id_and_no_details(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Platform(Settings(home=tmp_path / "home", port=1)))
    secret_path = str(tmp_path / "secret" / "key.json")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(f"cannot read {secret_path}")

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://loopml") as client:
            return await client.get("/boom")

    with caplog.at_level(logging.ERROR):
        response = asyncio.run(call())
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["status"] == "INTERNAL"
    assert secret_path not in error["message"]
    match = re.search(r"Internal error ([0-9a-f]{12}) \(RuntimeError\)", error["message"])
    assert match, error["message"]
    # the log has the incident id and the details
    logged = [r for r in caplog.records if match.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert secret_path in str(logged[0].exc_info[1])
