"""`loopml datasets`: create, list, describe and delete Vertex managed tabular datasets."""

from __future__ import annotations

from typing import Any

import typer

from loopml.cli._common import (
    JSON,
    LOCATION,
    PROJECT,
    Column,
    cli_errors,
    fail,
    make_client,
    output,
    parse_labels,
    print_fields,
    print_json,
    short,
)

TABULAR_SCHEMA = "gs://google-cloud-aiplatform/schema/dataset/metadata/tabular_1.0.0.yaml"

datasets_app = typer.Typer(
    help="Managed tabular datasets (Vertex Datasets over CSV objects or warehouse tables).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(datasets_app, name="datasets")


def _source(dataset: dict[str, Any]) -> str:
    config = (dataset.get("metadata") or {}).get("inputConfig") or {}
    if "gcsSource" in config:
        return ", ".join(config["gcsSource"].get("uri") or [])
    return str((config.get("bigquerySource") or {}).get("uri", ""))


COLUMNS: list[Column] = [
    ("DATASET", lambda d: short(d.get("name"))),
    ("DISPLAY NAME", "displayName"),
    ("SOURCE", _source),
    ("LABELS", "labels"),
    ("CREATED", "createTime"),
]
FIELDS: list[Column] = [
    ("name", "name"),
    ("display name", "displayName"),
    ("description", "description"),
    ("source", _source),
    ("schema", "metadataSchemaUri"),
    ("labels", "labels"),
    ("created", "createTime"),
    ("updated", "updateTime"),
]


def _path(client: Any, dataset: str) -> str:
    name = dataset if dataset.startswith("projects/") else f"{client.parent}/datasets/{dataset}"
    return f"/v1/{name}"


@datasets_app.command("create")
def create(
    display_name: str = typer.Option(..., "--display-name", "-n", help="Display name."),
    gcs_source: list[str] = typer.Option(
        None, "--gcs-source", help="gs:// CSV object (repeatable; '*' allowed)."
    ),
    bq_source: str = typer.Option(None, "--bq-source", help="Warehouse table, bq://project.dataset.table."),
    label: list[str] = typer.Option(None, "--label", help="Label key=value (repeatable)."),
    description: str = typer.Option(None, "--description"),
    project: str = PROJECT,
    location: str = LOCATION,
    as_json: bool = JSON,
) -> None:
    """Create a tabular dataset from CSV objects or a warehouse table (which must exist)."""
    if bool(gcs_source) == bool(bq_source):
        fail("give either --gcs-source (one or more) or --bq-source")
    config = (
        {"gcsSource": {"uri": list(gcs_source)}} if gcs_source else {"bigquerySource": {"uri": bq_source}}
    )
    body: dict[str, Any] = {
        "displayName": display_name,
        "metadataSchemaUri": TABULAR_SCHEMA,
        "metadata": {"inputConfig": config},
        "labels": parse_labels(label) or {},
    }
    if description:
        body["description"] = description
    with cli_errors():
        client = make_client(project, location)
        op = client.json("POST", f"/v1/{client.parent}/datasets", json=body)
    dataset = {k: v for k, v in op["response"].items() if k != "@type"}
    if as_json:
        print_json(dataset)
    else:
        typer.echo(f"Created dataset {short(dataset['name'])} ({display_name})")


@datasets_app.command("list")
def list_datasets(
    filter: str = typer.Option(None, "--filter", help='e.g. display_name="wine" AND labels.team="ml"'),
    order_by: str = typer.Option(None, "--order-by", help="e.g. create_time desc"),
    project: str = PROJECT,
    location: str = LOCATION,
    as_json: bool = JSON,
) -> None:
    """List datasets, newest first."""
    with cli_errors():
        rows = make_client(project, location).list_datasets(filter=filter, order_by=order_by)
    output(rows, as_json, COLUMNS)


@datasets_app.command("describe")
def describe(
    dataset: str = typer.Argument(..., help="DATASET id or resource name"),
    project: str = PROJECT,
    location: str = LOCATION,
    as_json: bool = JSON,
) -> None:
    """Show one dataset."""
    with cli_errors():
        client = make_client(project, location)
        found = client.json("GET", _path(client, dataset))
    if as_json:
        print_json(found)
    else:
        print_fields(found, FIELDS)


@datasets_app.command("delete")
def delete(
    dataset: str = typer.Argument(..., help="DATASET id or resource name"),
    project: str = PROJECT,
    location: str = LOCATION,
) -> None:
    """Delete a dataset (its source data is left alone)."""
    with cli_errors():
        client = make_client(project, location)
        client.json("DELETE", _path(client, dataset))
    typer.echo(f"Deleted dataset {short(dataset)}")
