"""The server starts, answers health, and turns every failure into Vertex error JSON."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import ServerProcess, free_port


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


def test_oversize_chunked_predict_body_is_413(server: ServerProcess) -> None:
    """No Content-Length (Transfer-Encoding: chunked): the limit is enforced while the body streams."""
    url = f"{server.url}/v1/projects/p/locations/l/endpoints/1:predict"

    def body(total: int) -> Iterator[bytes]:
        yield b'{"instances": ["'
        sent = 0
        while sent < total:
            n = min(100_000, total - sent)
            yield b"x" * n
            sent += n
        yield b'"]}'

    sent_headers: dict[str, str] = {}

    def remember(request: httpx.Request) -> None:
        sent_headers.update(request.headers)

    with httpx.Client(event_hooks={"request": [remember]}, timeout=60) as client:
        r = client.post(url, content=body(1_600_000), headers={"content-type": "application/json"})
        assert sent_headers.get("transfer-encoding") == "chunked" and "content-length" not in sent_headers
        assert r.status_code == 413, r.text
        error = r.json()["error"]
        assert error["code"] == 413 and "larger than the limit of 1500000 bytes" in error["message"]
        # under the limit the same streamed body is read whole and reaches routing (no such endpoint)
        r = client.post(url, content=body(1_400_000), headers={"content-type": "application/json"})
        assert r.status_code == 404, r.text


def _run_server(home: Path, port: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPML_")}
    return subprocess.run(
        [sys.executable, "-m", "loopml", "server", "--home", str(home), "--port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_second_server_on_a_busy_port_says_so_and_touches_nothing(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = _run_server(tmp_path / "home", port)
    assert result.returncode == 1
    assert f"Error: cannot listen on 127.0.0.1:{port} (Address already in use)" in result.stderr
    assert "--port" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "home").exists()


def test_second_server_on_a_busy_home_names_the_warehouse_holder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    holder = subprocess.Popen(  # another process holding the warehouse file, as a running server does
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); "
            "sys.stdin.read()",
            str(home / "warehouse.duckdb"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        result = _run_server(home, free_port())
    finally:
        holder.communicate(timeout=30)
    assert result.returncode == 1
    assert (
        f"Error: The warehouse file {home / 'warehouse.duckdb'} is in use by another process (PID {holder.pid})"
        in result.stderr
    )
    assert "--home" in result.stderr and "Traceback" not in result.stderr
