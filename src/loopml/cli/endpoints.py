"""`loopml endpoints`: create, list, describe, deploy, undeploy, predict, delete."""

from __future__ import annotations

from typing import Any

import typer

from loopml.cli._common import (
    JSON,
    LOCATION,
    PROJECT,
    Column,
    cli_errors,
    load_json_arg,
    make_client,
    output,
    parse_labels,
    print_fields,
    print_json,
    print_table,
    short,
)

endpoints_app = typer.Typer(help="Endpoints: deploy model versions and predict.", no_args_is_help=True)

ENDPOINT_COLUMNS: list[Column] = [
    ("ENDPOINT", lambda e: short(e.get("name"))),
    ("DISPLAY NAME", "displayName"),
    ("DEPLOYED", lambda e: len(e.get("deployedModels") or [])),
    ("TRAFFIC", "trafficSplit"),
    ("CREATED", "createTime"),
]
DEPLOYED_COLUMNS: list[Column] = [
    ("DEPLOYED MODEL", "id"),
    ("MODEL", lambda d: f"{short(d.get('model'))}@{d.get('modelVersionId')}"),
    ("DISPLAY NAME", "displayName"),
    ("REPLICAS", lambda d: _replicas(d)),
    ("AVAILABLE", lambda d: (d.get("status") or {}).get("availableReplicaCount", 0)),
    ("TRAFFIC %", "_traffic"),
]


def _replicas(dm: dict[str, Any]) -> str:
    res = dm.get("dedicatedResources") or dm.get("automaticResources") or {}
    return f"{res.get('minReplicaCount', '')}-{res.get('maxReplicaCount', '')}"


def register(app: typer.Typer) -> None:
    app.add_typer(endpoints_app, name="endpoints")


@endpoints_app.command("create")
def create(
    display_name: str = typer.Argument(..., help="Display name of the endpoint."),
    endpoint_id: str = typer.Option(None, "--endpoint-id", help="Id (generated when omitted)."),
    description: str = typer.Option(None, "--description"),
    label: list[str] = typer.Option(None, "--label", help="Label key=value (repeatable)."),
    project: str = PROJECT,
    location: str = LOCATION,
    as_json: bool = JSON,
) -> None:
    """Create an endpoint."""
    with cli_errors():
        endpoint = make_client(project, location).create_endpoint(
            display_name, endpoint_id=endpoint_id, description=description, labels=parse_labels(label)
        )
    if as_json:
        print_json(endpoint)
    else:
        typer.echo(f"Created endpoint {short(endpoint['name'])} ({endpoint['displayName']})")


@endpoints_app.command("list")
def list_endpoints(
    filter: str = typer.Option(None, "--filter", help='e.g. display_name="churn-ep"'),
    project: str = PROJECT,
    location: str = LOCATION,
    as_json: bool = JSON,
) -> None:
    """List endpoints."""
    with cli_errors():
        found = make_client(project, location).list_endpoints(filter=filter)
    output(found, as_json, ENDPOINT_COLUMNS)


@endpoints_app.command("describe")
def describe(
    endpoint: str = typer.Argument(..., help="ENDPOINT id"),
    project: str = PROJECT,
    location: str = LOCATION,
    as_json: bool = JSON,
) -> None:
    """Show an endpoint, its deployed models and traffic split."""
    with cli_errors():
        found = make_client(project, location).get_endpoint(endpoint)
    if as_json:
        print_json(found)
        return
    print_fields(
        found,
        [
            ("name", "name"),
            ("display name", "displayName"),
            ("description", "description"),
            ("labels", "labels"),
            ("traffic split", "trafficSplit"),
            ("created", "createTime"),
        ],
    )
    split = found.get("trafficSplit") or {}
    rows = [{**dm, "_traffic": split.get(dm["id"], 0)} for dm in found.get("deployedModels", [])]
    if rows:
        print_table(rows, DEPLOYED_COLUMNS)


@endpoints_app.command("deploy")
def deploy(
    endpoint: str = typer.Argument(..., help="ENDPOINT id"),
    model: str = typer.Option(..., "--model", "-m", help="MODEL, MODEL@VERSION or MODEL@ALIAS"),
    min_replicas: int = typer.Option(1, "--min-replicas", min=1),
    max_replicas: int = typer.Option(None, "--max-replicas", min=1, help="Default: --min-replicas."),
    traffic: int = typer.Option(100, "--traffic", min=0, max=100, help="Percent of traffic for this model."),
    machine_type: str = typer.Option("n1-standard-2", "--machine-type"),
    display_name: str = typer.Option(None, "--display-name"),
    project: str = PROJECT,
    location: str = LOCATION,
    as_json: bool = JSON,
) -> None:
    """Deploy a model version to an endpoint (waits until a replica is healthy)."""
    with cli_errors():
        dm = make_client(project, location).deploy(
            endpoint,
            model,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            traffic=traffic,
            machine_type=machine_type,
            display_name=display_name,
        )
    if as_json:
        print_json(dm)
    else:
        typer.echo(f"Deployed {model} to endpoint {endpoint} as deployed model {dm.get('id')}")


@endpoints_app.command("undeploy")
def undeploy(
    endpoint: str = typer.Argument(..., help="ENDPOINT id"),
    deployed_model_id: str = typer.Argument(..., help="Deployed model id (see `endpoints describe`)"),
    project: str = PROJECT,
    location: str = LOCATION,
) -> None:
    """Undeploy a model; its traffic is spread over the others (refused if it has all the traffic)."""
    with cli_errors():
        make_client(project, location).undeploy(endpoint, deployed_model_id)
    typer.echo(f"Undeployed {deployed_model_id} from endpoint {endpoint}")


@endpoints_app.command("predict")
def predict(
    endpoint: str = typer.Argument(..., help="ENDPOINT id"),
    instances: str = typer.Option(..., "--instances", "-i", help="JSON list of instances, or @file.json"),
    parameters: str = typer.Option(None, "--parameters", help="JSON object, or @file.json"),
    project: str = PROJECT,
    location: str = LOCATION,
) -> None:
    """Send a prediction request; prints the JSON response."""
    data = load_json_arg(instances, "--instances")
    if isinstance(data, dict) and "instances" in data:
        data = data["instances"]
    if not isinstance(data, list):
        raise typer.BadParameter("--instances must be a JSON list (or an object with an 'instances' list)")
    params = load_json_arg(parameters, "--parameters") if parameters else None
    with cli_errors():
        result = make_client(project, location).predict(endpoint, data, params)
    print_json(result)


@endpoints_app.command("delete")
def delete(
    endpoint: str = typer.Argument(..., help="ENDPOINT id"),
    force: bool = typer.Option(False, "--force", help="Undeploy every model first."),
    project: str = PROJECT,
    location: str = LOCATION,
) -> None:
    """Delete an endpoint (refused while models are deployed, unless --force)."""
    with cli_errors():
        make_client(project, location).delete_endpoint(endpoint, force=force)
    typer.echo(f"Deleted endpoint {endpoint}")


# -- `loopml endpoints traffic` -------------------------------------------------------------------
# SERVE adds the traffic command here (decorate with @endpoints_app.command("traffic")); it can use
# make_client(...).set_traffic(endpoint, split) and print_table/output from loopml.cli._common.
from loopml.cli.traffic import replicas as _replicas_cmd  # noqa: E402
from loopml.cli.traffic import traffic as _traffic  # noqa: E402

endpoints_app.command("traffic")(_traffic)
endpoints_app.command("replicas")(_replicas_cmd)
