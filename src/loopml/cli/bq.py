"""`loopml bq`: the warehouse from the shell, in the spirit of Google's `bq` (over the server's REST API).

loopml bq mk --dataset my-proj:ecommerce_sink
loopml bq mk --table ecommerce_sink.t tax:FLOAT,shipping:FLOAT
loopml bq load --source_format=CSV ecommerce_sink.t data.csv tax:FLOAT,shipping:FLOAT
loopml bq query --format=csv 'SELECT tax, shipping FROM ecommerce_sink.t'
loopml bq head -n 10 ecommerce_sink.t
loopml bq rm -r -f ecommerce_sink
"""

from __future__ import annotations

import csv
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import typer

from loopml.cli._common import cli_errors, fail, print_fields, print_json, print_table

bq_app = typer.Typer(
    help="BigQuery-style warehouse commands (datasets, tables, queries, loads).", no_args_is_help=True
)

PROJECT_ID = typer.Option(
    None,
    "--project_id",
    "--project",
    envvar="LOOPML_PROJECT",
    help="Project (default: LOOPML_DEFAULT_PROJECT).",
)
FORMAT = typer.Option("pretty", "--format", help="Output format: pretty, json (or prettyjson) or csv.")
BASE = "/bigquery/v2/projects"


def register(app: typer.Typer) -> None:
    app.add_typer(bq_app, name="bq")


def _client() -> Any:
    from loopml.client import Client
    from loopml.config import Settings

    return Client(Settings.from_env().url)


def _project(project: str | None) -> str:
    if project:
        return project
    from loopml.config import Settings

    return str(getattr(Settings.from_env(), "default_project", None) or "local")


def parse_name(name: str, project: str) -> tuple[str, str, str | None]:
    """`p:ds.t`, `p.ds.t`, `ds.t`, `p:ds`, `ds` → (project, dataset, table or None)."""
    if ":" in name:
        project, name = name.rsplit(":", 1)
        parts = name.split(".")
    else:
        parts = name.split(".")
        if len(parts) == 3:
            project, parts = parts[0], parts[1:]
    if len(parts) == 1 and parts[0]:
        return project, parts[0], None
    if len(parts) == 2 and all(parts):
        return project, parts[0], parts[1]
    fail(f"cannot read {name!r}: expected [project:]dataset[.table]")


def parse_schema(text: str) -> list[dict[str, Any]]:
    """`name:TYPE,name2:TYPE` (TYPE defaults to STRING) or a JSON schema file (a list of fields)."""
    path = Path(text).expanduser()
    if text.endswith(".json") or path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            fail(f"cannot read schema file {path}: {exc}")
        fields = data.get("fields") if isinstance(data, dict) else data
        if not isinstance(fields, list):
            fail(f"schema file {path} must hold a list of fields")
        return fields
    out = []
    for item in text.split(","):
        name, _, kind = item.strip().partition(":")
        if not name:
            fail(f"bad schema entry {item!r}: expected name:TYPE")
        out.append({"name": name, "type": (kind or "STRING").upper(), "mode": "NULLABLE"})
    return out


def _emit(rows: list[dict[str, Any]], names: list[str], fmt: str) -> None:
    if fmt in ("json", "prettyjson"):
        print_json(rows)
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(names)
        for row in rows:
            writer.writerow(
                [
                    ""
                    if row[n] is None
                    else json.dumps(row[n])
                    if isinstance(row[n], (dict, list))
                    else row[n]
                    for n in names
                ]
            )
    elif fmt == "pretty":
        print_table(rows, [(n, n) for n in names])
    else:
        fail(f"unknown --format {fmt!r}: use pretty, json or csv")


@bq_app.command("query")
def query(
    sql: str = typer.Argument(..., help="GoogleSQL text (a statement or a script)."),
    project: str | None = PROJECT_ID,
    dataset_id: str | None = typer.Option(
        None, "--dataset_id", help="Default dataset for unqualified tables."
    ),
    max_rows: int = typer.Option(100, "--max_rows", "-n", help="Rows to print at most."),
    fmt: str = FORMAT,
    use_legacy_sql: str = typer.Option(
        "false", "--use_legacy_sql", help="Accepted for bq compatibility (`--use_legacy_sql=false`)."
    ),
    nouse_legacy_sql: bool = typer.Option(False, "--nouse_legacy_sql", help="bq's spelling of the default."),
    dry_run: bool = typer.Option(False, "--dry_run", help="Only validate the query and show its schema."),
) -> None:
    """Run a query and print its rows (DDL/DML print what they did)."""
    from loopml.warehouse.rows import decode_rows

    p = _project(project)
    body: dict[str, Any] = {
        "query": sql,
        "useLegacySql": use_legacy_sql.strip().lower() in ("true", "1", "yes") and not nouse_legacy_sql,
        "timeoutMs": 10000,
        "maxResults": max_rows,
        "formatOptions": {"useInt64Timestamp": True},
        "requestId": str(uuid.uuid4()),
    }
    if dataset_id:
        body["defaultDataset"] = {"projectId": p, "datasetId": dataset_id}
    if dry_run:
        body["dryRun"] = True
    with cli_errors(), _client() as client:
        result = client.json("POST", f"{BASE}/{p}/queries", json=body)
        while not result.get("jobComplete"):
            time.sleep(0.2)
            job_id = result["jobReference"]["jobId"]
            result = client.json(
                "GET",
                f"{BASE}/{p}/queries/{job_id}",
                params={
                    "maxResults": max_rows,
                    "timeoutMs": 10000,
                    "formatOptions.useInt64Timestamp": "true",
                },
            )
    fields = (result.get("schema") or {}).get("fields") or []
    if dry_run:
        typer.echo("Query successfully validated.")
        if fields:
            typer.echo("Schema:\n" + "\n".join(_schema_lines(fields)))
        return
    if not fields:
        if "numDmlAffectedRows" in result:
            typer.echo(f"Number of affected rows: {result['numDmlAffectedRows']}")
        else:
            typer.echo("Statement done.")
        return
    _emit(decode_rows(result.get("rows") or [], fields), [f["name"] for f in fields], fmt)


@bq_app.command("mk")
def mk(
    name: str = typer.Argument(..., help="[project:]dataset or [project:]dataset.table"),
    schema: str | None = typer.Argument(None, help="Table schema: name:TYPE,... or a JSON schema file."),
    dataset: bool = typer.Option(False, "--dataset", "-d", help="Create a dataset."),
    table: bool = typer.Option(False, "--table", "-t", help="Create a table."),
    schema_opt: str | None = typer.Option(None, "--schema", help="Table schema (instead of the argument)."),
    partition_field: str | None = typer.Option(
        None, "--time_partitioning_field", help="Day-partition column."
    ),
    partition_type: str = typer.Option("DAY", "--time_partitioning_type", help="DAY, HOUR, MONTH or YEAR."),
    location: str | None = typer.Option(None, "--location", help="Dataset location (default US)."),
    description: str | None = typer.Option(None, "--description"),
    project: str | None = PROJECT_ID,
) -> None:
    """Create a dataset or a table."""
    p, ds, t = parse_name(name, _project(project))
    with cli_errors(), _client() as client:
        if dataset or (t is None and not table):
            if t is not None:
                fail(f"{name!r} names a table; drop --dataset or give a dataset name")
            body: dict[str, Any] = {"datasetReference": {"projectId": p, "datasetId": ds}}
            if location:
                body["location"] = location
            if description:
                body["description"] = description
            client.json("POST", f"{BASE}/{p}/datasets", json=body)
            typer.echo(f"Dataset '{p}:{ds}' successfully created.")
            return
        if t is None:
            fail("a table name looks like dataset.table")
        text = schema_opt or schema
        if not text:
            fail("a table needs a schema: name:TYPE,... or a JSON schema file")
        body = {
            "tableReference": {"projectId": p, "datasetId": ds, "tableId": t},
            "schema": {"fields": parse_schema(text)},
        }
        if partition_field:
            body["timePartitioning"] = {"type": partition_type.upper(), "field": partition_field}
        if description:
            body["description"] = description
        client.json("POST", f"{BASE}/{p}/datasets/{ds}/tables", json=body)
        typer.echo(f"Table '{p}:{ds}.{t}' successfully created.")


@bq_app.command("ls")
def ls(
    name: str | None = typer.Argument(None, help="A dataset to list tables of (default: list datasets)."),
    project: str | None = PROJECT_ID,
    fmt: str = FORMAT,
) -> None:
    """List datasets, or the tables of a dataset."""
    p = _project(project)
    with cli_errors(), _client() as client:
        if name is None:
            items = client.json("GET", f"{BASE}/{p}/datasets").get("datasets") or []
            rows = [
                {"datasetId": d["datasetReference"]["datasetId"], "location": d.get("location")}
                for d in items
            ]
            names = ["datasetId", "location"]
        else:
            p, ds, _ = parse_name(name, p)
            items = client.json("GET", f"{BASE}/{p}/datasets/{ds}/tables").get("tables") or []
            rows = [
                {
                    "tableId": t["tableReference"]["tableId"],
                    "Type": t.get("type"),
                    "Time Partitioning": (t.get("timePartitioning") or {}).get("type", ""),
                }
                for t in items
            ]
            names = ["tableId", "Type", "Time Partitioning"]
    _emit(rows, names, fmt)


def _schema_lines(fields: list[dict[str, Any]], indent: str = "") -> list[str]:
    lines = []
    for f in fields:
        mode = "" if f.get("mode", "NULLABLE") == "NULLABLE" else f" ({f['mode']})"
        lines.append(f"{indent}|- {f['name']}: {f['type'].lower()}{mode}")
        lines.extend(_schema_lines(f.get("fields") or [], indent + "|  "))
    return lines


@bq_app.command("show")
def show(
    name: str = typer.Argument(..., help="[project:]dataset or [project:]dataset.table"),
    project: str | None = PROJECT_ID,
    fmt: str = FORMAT,
) -> None:
    """Show a dataset or a table (schema, rows, partitioning)."""
    p, ds, t = parse_name(name, _project(project))
    with cli_errors(), _client() as client:
        path = f"{BASE}/{p}/datasets/{ds}" + (f"/tables/{t}" if t else "")
        resource = client.json("GET", path)
    if fmt == "json":
        print_json(resource)
        return
    if t is None:
        print_fields(
            resource,
            [
                ("Dataset", "id"),
                ("Location", "location"),
                ("Labels", "labels"),
                ("Created (ms)", "creationTime"),
            ],
        )
        return
    print_fields(
        resource,
        [
            ("Table", "id"),
            ("Type", "type"),
            ("Total rows", "numRows"),
            ("Partitioning", lambda r: (r.get("timePartitioning") or {}).get("field")),
            ("Created (ms)", "creationTime"),
        ],
    )
    typer.echo("Schema:\n" + "\n".join(_schema_lines(resource["schema"]["fields"])))


@bq_app.command("head")
def head(
    name: str = typer.Argument(..., help="[project:]dataset.table"),
    n: int = typer.Option(100, "-n", "--max_rows", help="Rows to print."),
    start: int = typer.Option(0, "-s", "--start_row", help="First row to print."),
    project: str | None = PROJECT_ID,
    fmt: str = FORMAT,
) -> None:
    """Print the first rows of a table."""
    from loopml.warehouse.rows import decode_rows

    p, ds, t = parse_name(name, _project(project))
    if t is None:
        fail("head needs a table: dataset.table")
    with cli_errors(), _client() as client:
        table = client.json("GET", f"{BASE}/{p}/datasets/{ds}/tables/{t}")
        data = client.json(
            "GET",
            f"{BASE}/{p}/datasets/{ds}/tables/{t}/data",
            params={"maxResults": n, "startIndex": start, "formatOptions.useInt64Timestamp": "true"},
        )
    fields = table["schema"]["fields"]
    _emit(decode_rows(data.get("rows") or [], fields), [f["name"] for f in fields], fmt)


@bq_app.command("load")
def load(
    name: str = typer.Argument(..., help="[project:]dataset.table to load into."),
    source: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="Local CSV, JSON-lines or Parquet file."
    ),
    schema: str | None = typer.Argument(None, help="Schema for a new table: name:TYPE,... or a JSON file."),
    source_format: str = typer.Option(
        "CSV", "--source_format", help="CSV, NEWLINE_DELIMITED_JSON or PARQUET."
    ),
    skip_leading_rows: int | None = typer.Option(
        None, "--skip_leading_rows", help="CSV header rows to skip."
    ),
    autodetect: bool = typer.Option(False, "--autodetect", help="Infer the schema (new tables)."),
    replace: bool = typer.Option(False, "--replace", help="Replace the table's rows instead of appending."),
    field_delimiter: str = typer.Option(",", "--field_delimiter", "-F"),
    project: str | None = PROJECT_ID,
) -> None:
    """Load a local file into a table (creates it when needed)."""
    p, ds, t = parse_name(name, _project(project))
    if t is None:
        fail("load needs a table: dataset.table")
    load_cfg: dict[str, Any] = {
        "destinationTable": {"projectId": p, "datasetId": ds, "tableId": t},
        "sourceFormat": source_format.upper(),
        "fieldDelimiter": field_delimiter,
        "writeDisposition": "WRITE_TRUNCATE" if replace else "WRITE_APPEND",
        "autodetect": autodetect,
    }
    if schema:
        load_cfg["schema"] = {"fields": parse_schema(schema)}
    if skip_leading_rows is not None:
        load_cfg["skipLeadingRows"] = skip_leading_rows
    boundary = uuid.uuid4().hex
    meta = json.dumps({"configuration": {"load": load_cfg}}).encode()
    body = (
        f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode()
        + meta
        + f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        + source.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    with cli_errors(), _client() as client:
        job = client.json(
            "POST",
            f"/upload/bigquery/v2/projects/{p}/jobs",
            params={"uploadType": "multipart"},
            content=body,
            headers={"content-type": f"multipart/related; boundary={boundary}"},
        )
        job_id = job["jobReference"]["jobId"]
        while job["status"]["state"] != "DONE":
            time.sleep(0.2)
            job = client.json("GET", f"{BASE}/{p}/jobs/{job_id}")
    error = job["status"].get("errorResult")
    if error:
        fail(error.get("message", "load failed"))
    rows = (job.get("statistics") or {}).get("load", {}).get("outputRows", "0")
    typer.echo(f"Loaded {rows} row(s) into {p}:{ds}.{t}.")


@bq_app.command("rm")
def rm(
    name: str = typer.Argument(..., help="[project:]dataset or [project:]dataset.table"),
    force: bool = typer.Option(False, "-f", "--force", help="Do not ask for confirmation."),
    recursive: bool = typer.Option(False, "-r", "--recursive", help="Delete a dataset with its tables."),
    table_flag: bool = typer.Option(False, "-t", "--table", help="Accepted for bq compatibility."),
    project: str | None = PROJECT_ID,
) -> None:
    """Delete a table, or a dataset (-r also deletes its tables)."""
    p, ds, t = parse_name(name, _project(project))
    what = f"table '{p}:{ds}.{t}'" if t else f"dataset '{p}:{ds}'"
    if not force and not typer.confirm(f"rm: remove {what}?"):
        raise typer.Exit(1)
    with cli_errors(), _client() as client:
        if t:
            client.request("DELETE", f"{BASE}/{p}/datasets/{ds}/tables/{t}")
        else:
            client.request(
                "DELETE",
                f"{BASE}/{p}/datasets/{ds}",
                params={"deleteContents": "true" if recursive else None},
            )
    typer.echo(f"Removed {what}.")
