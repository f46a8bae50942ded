"""`loopml synth ecommerce`: the workload-1 event generator, posting to `<endpoint>/json`."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

synth_app = typer.Typer(help="Synthetic event streams for the reference workloads.", no_args_is_help=True)
console = Console()


def register(app: typer.Typer) -> None:
    app.add_typer(synth_app, name="synth")


@synth_app.command("ecommerce")
def ecommerce(
    endpoint: str = typer.Option(
        ...,
        "--endpoint",
        help="Base URL; events go to <URL>/json (e.g. http://127.0.0.1:8080/ingest/hyp-pubsub-topic).",
    ),
    rate: float = typer.Option(
        10.0, "--rate", help="Events per second (0 = as fast as the server acknowledges)."
    ),
    duration: float = typer.Option(None, "--duration", help="Stop after this many seconds."),
    events: int = typer.Option(None, "--events", help="Stop after this many events."),
    seed: int = typer.Option(None, "--seed", help="Random seed (same seed, same stream)."),
    noise: float = typer.Option(
        0.0, "--noise", help="Relative Gaussian noise on purchase tax/shipping/value."
    ),
    drift: float = typer.Option(0.0, "--drift", help="Shift normal purchase values by the factor (1 + D)."),
    batch: int = typer.Option(1, "--batch", min=1, help="Events per request (>1 posts JSON arrays)."),
    as_json: bool = typer.Option(False, "--json", help="Print the totals as JSON."),
) -> None:
    """Generate the hack-your-pipe e-commerce stream (view_item, add_to_cart, purchase, anomalies)."""
    from loopml.ingest.synth import send

    if events is not None and duration is not None:
        raise typer.BadParameter("give --events or --duration, not both")
    total = events if events is not None else (int(duration * rate) if duration and rate > 0 else None)
    with Progress(
        TextColumn("[bold]synth ecommerce"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        TimeElapsedColumn(),
        console=console,
        disable=as_json,
        transient=False,
    ) as progress:
        task = progress.add_task("send", total=total)
        try:
            stats = send(
                endpoint,
                count=events,
                duration=duration,
                rate=rate,
                batch=batch,
                seed=seed,
                noise=noise,
                drift=drift,
                on_progress=lambda n: progress.advance(task, n),
            )
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
    totals = stats.as_dict()
    if as_json:
        typer.echo(json.dumps(totals))
    else:
        console.print(
            f"sent {totals['sent']}, acknowledged {totals['acknowledged']}, failed {totals['failed']} "
            f"in {totals['seconds']}s ({totals['events_per_s']} events/s)"
        )
        for error in stats.errors[:5]:
            console.print(f"[red]error:[/red] {error}")
    if stats.failed and not stats.acknowledged:
        raise typer.Exit(1)
