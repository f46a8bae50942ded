"""Shared CLI helpers: the client from settings, rich tables, `--json` output, errors → exit code 1.

Typical command:

    @group.command("list")
    def list_things(project: str = PROJECT, location: str = LOCATION, as_json: bool = JSON) -> None:
        with cli_errors():
            client = make_client(project, location)
            rows = client.json("GET", f"/v1/{client.parent}/things").get("things", [])
        output(rows, as_json, [("NAME", "name"), ("CREATED", "createTime")])
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from loopml.errors import LoopmlError

if TYPE_CHECKING:
    from loopml.client import Client

PROJECT = typer.Option("local", "--project", help="Project of the resources.", envvar="LOOPML_PROJECT")
LOCATION = typer.Option(
    "us-central1", "--location", help="Location of the resources.", envvar="LOOPML_LOCATION"
)
JSON = typer.Option(False, "--json", help="Print the raw JSON instead of a table.")

Column = tuple[str, str | Callable[[dict[str, Any]], Any]]


def make_client(project: str = "local", location: str = "us-central1") -> Client:
    """A client for `LOOPML_URL` (Settings.url)."""
    from loopml.client import Client
    from loopml.config import Settings

    return Client(Settings.from_env().url, project=project, location=location)


def fail(message: str) -> NoReturn:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(1)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn loopml errors (including an unreachable server) into a message and exit code 1."""
    try:
        yield
    except LoopmlError as exc:
        fail(exc.message)


def load_json_arg(text: str, what: str = "value") -> Any:
    """Parse a JSON argument, or read it from a file when given as `@path.json`."""
    source = text
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            source = path.read_text()
        except OSError as exc:
            fail(f"cannot read {what} from {path}: {exc.strerror or exc}")
    try:
        return json.loads(source)
    except json.JSONDecodeError as exc:
        fail(f"{what} is not valid JSON: {exc}")


def parse_labels(items: Sequence[str] | None) -> dict[str, str] | None:
    """`["k=v", ...]` → dict (None when no labels were given)."""
    if not items:
        return None
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"label {item!r} must look like key=value")
        out[key] = value
    return out


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def short(name: str | None) -> str:
    """The last segment of a resource name."""
    return (name or "").rsplit("/", 1)[-1]


def _cell(row: dict[str, Any], column: str | Callable[[dict[str, Any]], Any]) -> str:
    value = column(row) if callable(column) else row.get(column)
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column], title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False, header_style="bold")
    for header, _ in columns:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row, col) for _, col in columns))
    Console(width=max(100, Console().width)).print(table)


def print_fields(row: dict[str, Any], fields: Sequence[Column]) -> None:
    """A two-column "field: value" view of one resource."""
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for label, col in fields:
        table.add_row(label, _cell(row, col))
    Console(width=max(100, Console().width)).print(table)


def output(data: Any, as_json: bool, columns: Sequence[Column], title: str | None = None) -> None:
    """`--json` prints the data; otherwise a table of the rows (a dict is one row)."""
    if as_json:
        print_json(data)
        return
    rows = data if isinstance(data, list) else [data]
    print_table(rows, columns, title)
