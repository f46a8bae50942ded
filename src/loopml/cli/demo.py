"""`loopml demo`: run the main job end to end against a server of its own."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    home: Path = typer.Option(
        Path(".loopml-demo"),
        help="State directory of the demo server (wiped and recreated if it is a previous demo's).",
    ),
    port: int = typer.Option(None, help="Port of the demo server (default: a free loopback port)."),
    events: int = typer.Option(5000, min=500, help="Shop events to ingest for workload 1."),
    keep_running: bool = typer.Option(
        False, "--keep-running", help="Leave the server running afterwards, to explore with the CLI."
    ),
) -> None:
    """Start a server, serve a scikit-learn model, then run workload 1 (events → BigQuery ML → endpoint).

    Every step checks its result; the command fails (exit 1) if one is wrong.
    """
    from rich.console import Console

    from loopml.demo import DemoFailed, run

    console = Console()
    try:
        run(home, port=port, events=events, keep_running=keep_running, console=console)
    except DemoFailed as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        raise typer.Exit(1) from None
