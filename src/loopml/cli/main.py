"""The `loopml` command. Each command group lives in its own module and is added in `GROUPS`."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="loopml",
    help="loopml: the whole ML loop on one machine, with the Vertex AI and BigQuery APIs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """loopml: the whole ML loop on one machine, with the Vertex AI and BigQuery APIs."""


# (module, attribute) pairs; each attribute is a typer.Typer added as a sub-command group, or a
# function `register(app)` adding top-level commands.
GROUPS: list[str] = [
    "loopml.cli.server",
    "loopml.cli.models",
    "loopml.cli.endpoints",
    "loopml.cli.bq",
    "loopml.cli.topics",
    "loopml.cli.images",
    "loopml.cli.jobs",
    "loopml.cli.datasets",
    "loopml.cli.batch",
    "loopml.cli.synth",
    "loopml.cli.demo",
]


def _load() -> None:
    for module_name in GROUPS:
        module = importlib.import_module(module_name)
        module.register(app)


def main() -> None:
    _load()
    app()


if __name__ == "__main__":
    main()
