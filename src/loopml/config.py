"""One typed Settings object, built once at the entry point and passed down.

Nothing reads the environment at import time: call `Settings.from_env()` in an entry point.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOPML_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".loopml")
    database_url: str | None = None
    """SQLAlchemy URL of the metadata store; default `sqlite:///$LOOPML_HOME/metadata.db`."""
    artifact_root: Path | None = None
    """Root of the local artifact store; default `$LOOPML_HOME`. Buckets live in `<root>/buckets`."""
    object_store_url: SecretStr | None = None
    """fsspec URL of a real object store (e.g. `s3://team-bucket/loopml`); unset = local buckets.
    Secret because a URL may carry user info: shown only through `display_url`."""
    object_store_options: SecretStr | None = None
    """JSON object of fsspec options for the object store (may hold keys: kept out of reprs)."""
    warehouse_path: Path | None = None
    """DuckDB file of the warehouse; default `$LOOPML_HOME/warehouse.duckdb`."""

    host: str = "127.0.0.1"
    port: int = 8080
    url: str = "http://127.0.0.1:8080"
    """Where the CLI and the Python client find the server (`LOOPML_URL`)."""

    log_level: str = "INFO"
    max_predict_bytes: int = 1_500_000
    max_request_bytes: int = 64 * 1024 * 1024

    autoscale_cycle_s: float = 15.0
    autoscale_window_s: float = 300.0
    replica_start_timeout_s: float = 120.0
    serving_max_batch: int = 64
    """Most requests coalesced into one call of a built-in model server (1 = no micro-batching)."""
    serving_pipeline_depth: int = 2
    """Batches in flight per built-in replica connection."""
    job_kill_grace_s: float = 5.0
    """Seconds between SIGTERM and SIGKILL when a training job is cancelled or times out."""

    # -- ingest (INGEST) ----------------------------------------------------------------------
    default_project: str = "local"
    """Project of topics reached through `POST /ingest/{topic}` without `?project=`."""
    ingest_log_path: Path | None = None
    """SQLite file of the message log (topics, subscriptions, messages); default `$LOOPML_HOME/ingest.db`."""

    # -- warehouse (WH) ---------------------------------------------------------------------
    bigquery_insert_wait_s: float = 2.0
    """How long jobs.insert waits for a query to finish before answering RUNNING (clients poll)."""
    warehouse_dedup_window_s: float = 600.0
    """insertId de-duplication window of streaming inserts (ids are persisted, at most 100k per table)."""

    # -- envs / images / storage (IMG) ------------------------------------------------------
    uv_cache_dir: Path | None = None
    """uv's package cache for env builds; unset = uv's own default (shared with the user's uv)."""
    envs_use_uv: bool = True
    """Build envs with `uv` (fast, hard-linked cache); False = `python -m venv` + pip."""
    envs_offline: bool = False
    """Install only from the local package cache (`uv pip install --offline`)."""
    prebuilt_envs: str = "isolated"
    """Prebuilt Vertex images: "isolated" (an env with the framework) or "host" (loopml's Python)."""
    gcs_mount: Path | None = None
    """If set (e.g. `/gcs`), the server links this path to the buckets dir (the Vertex `/gcs/` view)."""
    container_engine: str = "loopml"
    """How custom jobs and serving containers run images: "loopml" (host processes) or "docker"
    (images not in loopml's catalog run with `docker run`; see docs/images.md)."""
    docker_user: str | None = None
    """`docker run --user` for Docker job containers: unset = the server's own uid:gid (files
    they write under /gcs stay the server's); "" = the image's user (often root); or USER[:GROUP]."""

    # -- batch prediction / request logging (BATCH) -----------------------------------------
    batch_chunk_rows: int = 1_048_576
    """Rows per committed chunk of a batch job on built-in frameworks (others: batchSize x 16); the
    first three chunks of a built-in job are 1/8, 1/4 and 1/2 of it."""
    batch_worker_mode: str = "thread"
    """Batch chunk workers: "thread" (in the server) or "process" (spawned worker processes)."""
    batch_fsync: bool = False
    """fsync batch files (input snapshot, JSONL shards) before recording them: survive an OS crash too.
    Off by default: a process kill needs no fsync (the metadata store runs synchronous=NORMAL alike)."""
    batch_test_pause_after_chunk_s: float = 0.0
    """Test-only: sleep after each committed chunk (`LOOPML_BATCH_TEST_PAUSE_AFTER_CHUNK_S`)."""
    request_log_queue_size: int = 10_000
    """Request/response log entries held in memory at most; beyond that entries are dropped and counted."""
    request_log_flush_s: float = 0.5
    """How often the request logger writes queued entries to the warehouse."""

    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_home() / 'metadata.db'}"

    def resolved_artifact_root(self) -> Path:
        return (self.artifact_root or self.resolved_home()).expanduser().resolve()

    def resolved_warehouse_path(self) -> Path:
        return (self.warehouse_path or self.resolved_home() / "warehouse.duckdb").expanduser().resolve()

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Build settings from `LOOPML_*` variables, with explicit overrides winning."""
        clean = {k: v for k, v in overrides.items() if v is not None}
        return cls(**clean)  # type: ignore[arg-type]

    def ensure_dirs(self) -> None:
        home = self.resolved_home()
        home.mkdir(parents=True, exist_ok=True)
        (self.resolved_artifact_root() / "buckets").mkdir(parents=True, exist_ok=True)
