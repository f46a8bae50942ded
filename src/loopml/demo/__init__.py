"""`loopml demo`: the main job end to end on the embedded defaults, against a real server.

The demo starts its own `loopml server` (a child process on a free loopback port, state in a
directory of its own) and drives it only through the public APIs a user's code would use:

1. **Online prediction.** A scikit-learn classifier of the UCI red-wine data (shipped in
   `loopml/demo/data`, CC BY 4.0) is uploaded to a bucket over the Cloud Storage API, registered
   with `models:upload` and a prebuilt sklearn serving image, deployed to an endpoint and asked
   for predictions (which must match the model in this process).
2. **Workload 1** (the e-commerce anomaly detection of Hack Your Pipe): a topic with a BigQuery
   subscription into the workshop's nested `ecommerce_sink.cloud_run` table, synthetic shop events
   ingested over HTTP, `CREATE MODEL … KMEANS … MODEL_REGISTRY='VERTEX_AI'`, `ML.PREDICT`,
   deployment of the registered model, prediction of a normal and an anomalous purchase, and
   streaming inference that scores every new purchase into `cloud_run_anomaly`.

Every step checks its result and the demo exits non-zero when one is wrong.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console

from loopml.demo.common import MARKER, PROJECT, Api, DemoFailed, Summary, demo_server, free_port
from loopml.demo.online import online_prediction
from loopml.demo.workload1 import workload1

__all__ = ["DemoFailed", "run"]


# -- the whole demo -----------------------------------------------------------------------------
def prepare_home(home: Path, fresh: bool) -> None:
    if home.exists() and any(home.iterdir()):
        if not (home / MARKER).exists():
            raise DemoFailed(
                f"{home} exists and is not a demo home; pass an empty or new directory with --home"
            )
        if fresh:
            shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / MARKER).write_text("made by `loopml demo`; safe to delete\n")


def run(
    home: Path,
    *,
    port: int | None = None,
    events: int = 5000,
    keep_running: bool = False,
    console: Console | None = None,
) -> Summary:
    console = console or Console()
    home = home.resolve()
    prepare_home(home, fresh=True)
    port = port or free_port()
    started = time.perf_counter()
    with demo_server(home, port, keep_running) as url:
        console.print(f"[bold]loopml demo[/]: server on {url}, state in {home}")
        summary = Summary(home=home, url=url)
        api = Api(url)
        try:
            online_prediction(api, console, summary)
            workload1(api, console, summary, events, url)
        finally:
            api.close()
        summary.add("total time", f"{time.perf_counter() - started:.1f} s")
    console.rule("[bold green]demo finished: every step checked")
    for what, value in summary.facts:
        console.print(f"  {what:<32} {value}")
    console.print(f"  {'server log':<32} {home / 'demo-server.log'}")
    console.print(f"  {'warehouse (DuckDB)':<32} {home / 'warehouse.duckdb'}")
    if keep_running:
        console.print(f"\nThe server keeps running on {url}. Try:\n  export LOOPML_URL={url}")
        console.print(
            "  loopml models list --project demo-project\n  loopml endpoints list --project demo-project"
        )
    else:
        console.print(
            "\nLook around (the CLI is in .venv: `source .venv/bin/activate` first):\n"
            f"  loopml server --home {home} &\n"
            f"  loopml models list --project {PROJECT}\n"
            f"  loopml endpoints list --project {PROJECT}\n"
            "or run `loopml demo --keep-running` to leave the demo's own server up.",
            soft_wrap=True,
        )
    return summary
