"""`loopml models`: upload, list, describe, versions, alias, delete (Vertex Model Registry)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from loopml.cli._common import (
    JSON,
    LOCATION,
    PROJECT,
    Column,
    cli_errors,
    make_client,
    output,
    parse_labels,
    print_fields,
    print_json,
    short,
)

models_app = typer.Typer(help="Model Registry: models, versions and aliases.", no_args_is_help=True)

MODEL_COLUMNS: list[Column] = [
    ("MODEL", lambda m: short(m.get("name"))),
    ("VERSION", "versionId"),
    ("DISPLAY NAME", "displayName"),
    ("ALIASES", "versionAliases"),
    ("FRAMEWORK", "framework"),
    ("CREATED", "createTime"),
]
VERSION_COLUMNS: list[Column] = [
    ("VERSION", "versionId"),
    ("ALIASES", "versionAliases"),
    ("DESCRIPTION", "versionDescription"),
    ("ARTIFACTS", "artifactUri"),
    ("DEPLOYED", lambda m: len(m.get("deployedModels") or []) or ""),
    ("CREATED", "versionCreateTime"),
]


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


def _artifact_uri(value: str | None) -> str | None:
    """Local relative paths are made absolute: the server runs on this machine."""
    if not value or "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


@models_app.command("upload")
def upload(
    display_name: str = typer.Option(..., "--display-name", "-n", help="Display name of the model."),
    artifact_uri: str = typer.Option(
        None, "--artifact-uri", "-a", help="gs://, s3://, file:// or a local path."
    ),
    image_uri: str = typer.Option(
        None,
        "--image-uri",
        help="Serving image, e.g. us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2.",
    ),
    model_id: str = typer.Option(None, "--model-id", help="Id of a new model (generated when omitted)."),
    parent_model: str = typer.Option(None, "--parent-model", help="Add a version to this model."),
    alias: list[str] = typer.Option(None, "--alias", help="Version alias (repeatable)."),
    label: list[str] = typer.Option(None, "--label", help="Label key=value (repeatable)."),
    description: str = typer.Option(None, "--description"),
    version_description: str = typer.Option(None, "--version-description"),
    project: str = PROJECT,
    location: str = LOCATION,
    as_json: bool = JSON,
) -> None:
    """Upload a model (or, with --parent-model, a new version of one)."""
    with cli_errors():
        client = make_client(project, location)
        model = client.upload_model(
            display_name,
            _artifact_uri(artifact_uri),
            image_uri=image_uri,
            model_id=model_id,
            parent_model=parent_model,
            labels=parse_labels(label),
            description=description,
            version_aliases=list(alias) if alias else None,
            version_description=version_description,
        )
    if as_json:
        print_json(model)
    else:
        typer.echo(f"Uploaded {short(model['name'])}@{model['versionId']} ({model.get('framework', '')})")


@models_app.command("list")
def list_models(
    filter: str = typer.Option(None, "--filter", help='e.g. display_name="churn" AND labels.team="growth"'),
    order_by: str = typer.Option(None, "--order-by", help="e.g. create_time desc"),
    project: str = PROJECT,
    location: str = LOCATION,
    as_json: bool = JSON,
) -> None:
    """List models (one row per model: its default version)."""
    with cli_errors():
        models = make_client(project, location).list_models(filter=filter, order_by=order_by)
    output(models, as_json, MODEL_COLUMNS)


def _fields(model: dict[str, Any]) -> list[Column]:
    return [
        ("name", "name"),
        ("display name", "displayName"),
        ("version", "versionId"),
        ("aliases", "versionAliases"),
        ("description", "description"),
        ("version description", "versionDescription"),
        ("labels", "labels"),
        ("artifact uri", "artifactUri"),
        ("image", lambda m: (m.get("containerSpec") or {}).get("imageUri", "")),
        ("framework", "framework"),
        ("lineage", "lineage"),
        (
            "deployed to",
            lambda m: [f"{short(d['endpoint'])}/{d['deployedModelId']}" for d in m["deployedModels"]],
        ),
        ("created", "createTime"),
        ("version created", "versionCreateTime"),
    ]


@models_app.command("describe")
def describe(
    model: str = typer.Argument(..., help="MODEL, MODEL@VERSION or MODEL@ALIAS"),
    project: str = PROJECT,
    location: str = LOCATION,
    as_json: bool = JSON,
) -> None:
    """Show one model version (the default version for a bare MODEL)."""
    with cli_errors():
        found = make_client(project, location).get_model(model)
    if as_json:
        print_json(found)
    else:
        print_fields(found, _fields(found))


@models_app.command("versions")
def versions(
    model: str = typer.Argument(..., help="MODEL"),
    project: str = PROJECT,
    location: str = LOCATION,
    as_json: bool = JSON,
) -> None:
    """List the versions of a model."""
    with cli_errors():
        found = make_client(project, location).list_versions(model)
    output(found, as_json, VERSION_COLUMNS, title=model)


@models_app.command("alias")
def alias(
    model: str = typer.Argument(..., help="MODEL@VERSION to change"),
    add: list[str] = typer.Argument(None, help="Aliases to give this version (moved from others)."),
    remove: list[str] = typer.Option(None, "--remove", "-r", help="Alias to remove (repeatable)."),
    project: str = PROJECT,
    location: str = LOCATION,
    as_json: bool = JSON,
) -> None:
    """Add or remove version aliases, e.g. `loopml models alias churn@3 prod -r staging`."""
    changes = [*(add or []), *(f"-{r.lstrip('-')}" for r in (remove or []))]
    if not changes:
        raise typer.BadParameter("give at least one alias to add, or --remove ALIAS")
    with cli_errors():
        found = make_client(project, location).merge_aliases(model, changes)
    if as_json:
        print_json(found)
    else:
        typer.echo(f"{short(found['name'])}@{found['versionId']}: {', '.join(found['versionAliases'])}")


@models_app.command("delete")
def delete(
    model: str = typer.Argument(..., help="MODEL (every version) or MODEL@VERSION (one version)"),
    project: str = PROJECT,
    location: str = LOCATION,
) -> None:
    """Delete a model or one version (refused while deployed)."""
    with cli_errors():
        make_client(project, location).delete_model(model)
    typer.echo(f"Deleted {model}")
