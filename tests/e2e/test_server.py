"""The server starts, answers health, and turns every failure into Vertex error JSON."""

from __future__ import annotations

import httpx

from tests.conftest import ServerProcess


def test_healthz(server: ServerProcess) -> None:
    r = httpx.get(f"{server.url}/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_unknown_route_is_vertex_error_json(server: ServerProcess) -> None:
    r = httpx.get(f"{server.url}/v1/nothing/here")
    assert r.status_code == 404
    body = r.json()
    assert body["error"]["code"] == 404
    assert body["error"]["status"] == "NOT_FOUND"
    assert "/v1/nothing/here" in body["error"]["message"]


def test_oversize_predict_body_is_413(server: ServerProcess) -> None:
    big = b'{"instances": ["' + b"x" * 1_600_000 + b'"]}'
    r = httpx.post(
        f"{server.url}/v1/projects/p/locations/l/endpoints/1:predict",
        content=big,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == 413
