"""`loopml batch-predict` and `loopml batch list|describe|cancel` (Vertex batchPredictionJobs)."""

from __future__ import annotations

import time
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
    print_fields,
    print_json,
    short,
)

batch_app = typer.Typer(help="Batch prediction jobs: list, describe, cancel.", no_args_is_help=True)
TERMINAL = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_PARTIALLY_SUCCEEDED")


def _progress(job: dict[str, Any]) -> str:
    p = job.get("loopmlProgress") or {}
    return f"{p.get('processedCount', '0')}/{p.get('totalCount', '0')}"


def _output(job: dict[str, Any]) -> str:
    info = job.get("outputInfo") or {}
    if "gcsOutputDirectory" in info:
        return str(info["gcsOutputDirectory"])
    if "bigqueryOutputDataset" in info:
        return f"{info['bigqueryOutputDataset']}.{info.get('bigqueryOutputTable', '')}"
    return ""


JOB_COLUMNS: list[Column] = [
    ("JOB", lambda j: short(j.get("name"))),
    ("DISPLAY NAME", "displayName"),
    ("MODEL", lambda j: f"{short(j.get('model'))}@{j.get('modelVersionId', '')}"),
    ("STATE", lambda j: str(j.get("state", "")).removeprefix("JOB_STATE_")),
    ("PROGRESS", _progress),
    ("FAILED", lambda j: (j.get("completionStats") or {}).get("failedCount", "")),
    ("CREATED", "createTime"),
]
DESCRIBE_FIELDS: list[Column] = [
    *JOB_COLUMNS,
    ("OUTPUT", _output),
    ("ERROR", lambda j: (j.get("error") or {}).get("message", "")),
    ("STARTED", "startTime"),
    ("ENDED", "endTime"),
]


def register(app: typer.Typer) -> None:
    app.command("batch-predict")(batch_predict)
    app.add_typer(batch_app, name="batch")


def _model_name(client: Any, model: str) -> str:
    return model if model.startswith("projects/") else f"{client.parent}/models/{model}"


def build_job(
    model: str,
    *,
    display_name: str | None,
    bigquery_source: str | None,
    gcs_source: list[str] | None,
    input_format: str,
    bigquery_destination: str | None,
    gcs_destination: str | None,
    batch_size: int | None,
    max_replicas: int | None,
    instance_type: str | None,
    key_field: str | None,
    included_fields: list[str] | None,
    excluded_fields: list[str] | None,
) -> dict[str, Any]:
    """The BatchPredictionJob body for the command-line options (validated further by the server)."""
    if bool(bigquery_source) == bool(gcs_source):
        fail("give exactly one of --bigquery-source or --gcs-source")
    if bool(bigquery_destination) == bool(gcs_destination):
        fail("give exactly one of --bigquery-destination or --gcs-destination")
    body: dict[str, Any] = {
        "displayName": display_name or f"batch-{short(model)}-{time.strftime('%Y%m%d%H%M%S')}"
    }
    if bigquery_source:
        body["inputConfig"] = {"instancesFormat": "bigquery", "bigquerySource": {"inputUri": bigquery_source}}
    else:
        body["inputConfig"] = {"instancesFormat": input_format, "gcsSource": {"uris": list(gcs_source or [])}}
    if bigquery_destination:
        body["outputConfig"] = {
            "predictionsFormat": "bigquery",
            "bigqueryDestination": {"outputUri": bigquery_destination},
        }
    else:
        body["outputConfig"] = {
            "predictionsFormat": "jsonl",
            "gcsDestination": {"outputUriPrefix": gcs_destination},
        }
    instance: dict[str, Any] = {}
    if instance_type:
        instance["instanceType"] = instance_type
    if key_field:
        instance["keyField"] = key_field
    if included_fields:
        instance["includedFields"] = _split(included_fields)
    if excluded_fields:
        instance["excludedFields"] = _split(excluded_fields)
    if instance:
        body["instanceConfig"] = instance
    if batch_size:
        body["manualBatchTuningParameters"] = {"batchSize": batch_size}
    if max_replicas:
        body["dedicatedResources"] = {
            "machineSpec": {"machineType": "n1-standard-4"},
            "startingReplicaCount": 1,
            "maxReplicaCount": max_replicas,
        }
    return body


def _split(values: list[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def batch_predict(
    model: str = typer.Option(..., "--model", "-m", help="Model id or name, optionally @version or @alias."),
    bigquery_source: str = typer.Option(
        None, "--bigquery-source", help="Input table bq://project.dataset.table."
    ),
    gcs_source: list[str] = typer.Option(
        None, "--gcs-source", help="Input files gs://bucket/path/*.jsonl (repeat)."
    ),
    input_format: str = typer.Option("jsonl", "--format", help="Format of --gcs-source files: jsonl or csv."),
    bigquery_destination: str = typer.Option(
        None, "--bigquery-destination", help="bq://project (new dataset) or bq://project.dataset (new table)."
    ),
    gcs_destination: str = typer.Option(None, "--gcs-destination", help="Output prefix gs://bucket/path."),
    batch_size: int = typer.Option(None, "--batch-size", help="Instances per model call (default 64)."),
    max_replicas: int = typer.Option(None, "--max-replicas", help="Parallel workers at most (default 10)."),
    instance_type: str = typer.Option(None, "--instance-type", help="object or array."),
    key_field: str = typer.Option(None, "--key-field", help="Field output as `key` instead of the instance."),
    included_fields: list[str] = typer.Option(None, "--included-fields", help="Fields sent to the model."),
    excluded_fields: list[str] = typer.Option(
        None, "--excluded-fields", help="Fields not sent to the model."
    ),
    display_name: str = typer.Option(None, "--display-name", "-n", help="Job display name."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the job with a progress bar."),
    project: str = PROJECT,
    location: str = LOCATION,
    as_json: bool = JSON,
) -> None:
    """Run a batch prediction job over a table or storage files."""
    if input_format not in ("jsonl", "csv"):
        fail("--format must be jsonl or csv")
    with cli_errors(), make_client(project, location) as client:
        body = build_job(
            model,
            display_name=display_name,
            bigquery_source=bigquery_source,
            gcs_source=gcs_source,
            input_format=input_format,
            bigquery_destination=bigquery_destination,
            gcs_destination=gcs_destination,
            batch_size=batch_size,
            max_replicas=max_replicas,
            instance_type=instance_type,
            key_field=key_field,
            included_fields=included_fields,
            excluded_fields=excluded_fields,
        )
        body["model"] = _model_name(client, model)
        job = client.json("POST", f"/v1/{client.parent}/batchPredictionJobs", json=body)
        if wait:
            job = _follow(client, job, quiet=as_json)
    if as_json:
        print_json(job)
    else:
        print_fields(job, DESCRIBE_FIELDS)
    if job.get("state") in ("JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
        raise typer.Exit(1)


def _follow(client: Any, job: dict[str, Any], *, quiet: bool) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    path = f"/v1/{job['name']}"
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=quiet,
        transient=False,
    ) as progress:
        task = progress.add_task(short(job["name"]), total=None)
        while True:
            p = job.get("loopmlProgress") or {}
            total = int(p.get("totalCount") or 0)
            progress.update(
                task,
                total=total or None,
                completed=int(p.get("processedCount") or 0),
                description=f"{short(job['name'])} {str(job.get('state', '')).removeprefix('JOB_STATE_')}",
            )
            if job.get("state") in TERMINAL:
                return job
            time.sleep(0.5)
            job = client.json("GET", path)


def _job_path(client: Any, job: str) -> str:
    return f"/v1/{job}" if job.startswith("projects/") else f"/v1/{client.parent}/batchPredictionJobs/{job}"


@batch_app.command("list")
def list_jobs(
    state: str = typer.Option(None, "--state", help="Only jobs in this state (e.g. RUNNING)."),
    project: str = PROJECT,
    location: str = LOCATION,
    as_json: bool = JSON,
) -> None:
    """List batch prediction jobs, newest first."""
    with cli_errors(), make_client(project, location) as client:
        params: dict[str, Any] = {"pageSize": 1000}
        if state:
            full = state.upper() if state.upper().startswith("JOB_STATE_") else f"JOB_STATE_{state.upper()}"
            params["filter"] = f"state={full}"
        jobs = client.json("GET", f"/v1/{client.parent}/batchPredictionJobs", params=params).get(
            "batchPredictionJobs", []
        )
    output(jobs, as_json, JOB_COLUMNS)


@batch_app.command("describe")
def describe(
    job: str = typer.Argument(..., help="Job id or full name."),
    project: str = PROJECT,
    location: str = LOCATION,
    as_json: bool = JSON,
) -> None:
    """Show one batch prediction job: state, progress, counts, output."""
    with cli_errors(), make_client(project, location) as client:
        data = client.json("GET", _job_path(client, job))
    if as_json:
        print_json(data)
    else:
        print_fields(data, DESCRIBE_FIELDS)


@batch_app.command("cancel")
def cancel(
    job: str = typer.Argument(..., help="Job id or full name."),
    project: str = PROJECT,
    location: str = LOCATION,
) -> None:
    """Ask a running batch prediction job to stop after its current chunks."""
    with cli_errors(), make_client(project, location) as client:
        client.json("POST", _job_path(client, job) + ":cancel")
    typer.echo(f"Cancellation requested for {short(job)}.")
