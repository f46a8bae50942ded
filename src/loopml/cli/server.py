"""`loopml server`: run the API, the UI and the background workers in one process."""

from __future__ import annotations

import socket
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("server")(server)


def server(
    host: str = typer.Option(None, help="Interface to bind (default 127.0.0.1; LOOPML_HOST)."),
    port: int = typer.Option(None, help="Port to listen on (default 8080; LOOPML_PORT)."),
    home: Path = typer.Option(None, help="State directory (default ~/.loopml; LOOPML_HOME)."),
    log_level: str = typer.Option(None, help="Log level (default INFO; LOOPML_LOG_LEVEL)."),
    gcs_mount: Path = typer.Option(
        None,
        "--gcs-mount",
        help="Link this path (e.g. /gcs) to the buckets, as Vertex jobs see them (LOOPML_GCS_MOUNT).",
    ),
) -> None:
    """Run the loopml server (Vertex AI, BigQuery, Pub/Sub and GCS APIs) until interrupted."""
    import uvicorn

    from loopml import logs
    from loopml.api.app import create_app
    from loopml.config import Settings
    from loopml.errors import LoopmlError
    from loopml.platform import Platform

    settings = Settings.from_env(host=host, port=port, home=home, log_level=log_level, gcs_mount=gcs_mount)
    logs.configure(settings.log_level)
    busy = _cannot_listen(settings.host, settings.port)
    if busy is not None:  # before Platform.open, so a second server touches nothing
        typer.echo(
            f"Error: cannot listen on {settings.host}:{settings.port} ({busy}): is another loopml server "
            "running? Stop it, or pick another port with --port (LOOPML_PORT).",
            err=True,
        )
        raise typer.Exit(1)
    try:
        platform = Platform.open(settings)
    except LoopmlError as exc:  # a configuration mistake (e.g. the object store): no traceback
        typer.echo(f"Error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    app = create_app(platform)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        http="httptools",
        loop="uvloop",
        timeout_keep_alive=75,
        backlog=2048,
        timeout_graceful_shutdown=30,
    )
    remote = platform.artifacts.remote
    store = f", buckets in {remote.display}" if remote is not None else ""
    typer.echo(
        f"loopml server on http://{settings.host}:{settings.port} (home {settings.resolved_home()}{store})"
    )
    uvicorn.Server(config).run()


def _cannot_listen(host: str, port: int) -> str | None:
    """Why the server could not bind host:port (e.g. 'Address already in use'), or None if it can."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            sock.bind(addr)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
