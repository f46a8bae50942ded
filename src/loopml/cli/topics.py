"""`loopml topics` and `loopml subscriptions`: Pub/Sub topics and subscriptions on the server."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from loopml.cli._common import cli_errors

topics_app = typer.Typer(
    help="Pub/Sub topics: create, list, describe, delete, publish.", no_args_is_help=True
)
subs_app = typer.Typer(
    help="Pub/Sub subscriptions (pull, push, BigQuery, streaming inference).", no_args_is_help=True
)
console = Console()

_PROJECT = typer.Option(
    None, "--project", envvar="LOOPML_PROJECT", help="Project (default: LOOPML_DEFAULT_PROJECT)."
)
_JSON = typer.Option(False, "--json", help="Print the raw JSON.")


def register(app: typer.Typer) -> None:
    app.add_typer(topics_app, name="topics")
    app.add_typer(subs_app, name="subscriptions")


class Api:
    """Pub/Sub routes of the server at `LOOPML_URL`, through the loopml client's transport."""

    def __init__(self, project: str | None) -> None:
        from loopml.config import Settings

        settings = Settings.from_env()
        self.url = settings.url
        self.project = project or settings.default_project

    def call(self, method: str, path: str, **kw: Any) -> Any:
        from loopml.client import Client

        with Client(self.url, project=self.project) as client:
            return client.json(method, f"/v1/projects/{self.project}/{path}", **kw)


def _run(fn: Any) -> Any:
    with cli_errors():
        return fn()


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _print(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2))


# -- topics ------------------------------------------------------------------------------------
@topics_app.command("create")
def topic_create(name: str, project: str = _PROJECT, as_json: bool = _JSON) -> None:
    """Create a topic."""
    body = _run(lambda: Api(project).call("PUT", f"topics/{name}", json={}))
    _print(body) if as_json else console.print(f"created topic {body['name']}")


@topics_app.command("list")
def topic_list(project: str = _PROJECT, as_json: bool = _JSON) -> None:
    """List the project's topics and their subscriptions."""
    api = Api(project)
    topics = _run(lambda: api.call("GET", "topics")).get("topics", [])
    if as_json:
        _print(topics)
        return
    table = Table("topic", "subscriptions")
    for t in topics:
        subs = _run(lambda t=t: api.call("GET", f"topics/{_short(t['name'])}/subscriptions"))
        table.add_row(_short(t["name"]), ", ".join(_short(s) for s in subs.get("subscriptions", [])))
    console.print(table)


@topics_app.command("describe")
def topic_describe(name: str, project: str = _PROJECT, as_json: bool = _JSON) -> None:
    """Show a topic."""
    api = Api(project)
    body = _run(lambda: api.call("GET", f"topics/{name}"))
    body["subscriptions"] = _run(lambda: api.call("GET", f"topics/{name}/subscriptions")).get(
        "subscriptions", []
    )
    _print(body) if as_json else _kv(body)


@topics_app.command("delete")
def topic_delete(name: str, project: str = _PROJECT) -> None:
    """Delete a topic (its subscriptions stay, detached, as in Pub/Sub)."""
    _run(lambda: Api(project).call("DELETE", f"topics/{name}"))
    console.print(f"deleted topic {name}")


@topics_app.command("publish")
def topic_publish(
    name: str,
    message: str = typer.Option(..., "--message", "-m", help="Message data (text or JSON)."),
    attribute: list[str] = typer.Option([], "--attribute", "-a", help="key=value (repeatable)."),
    ordering_key: str = typer.Option(None, "--ordering-key"),
    project: str = _PROJECT,
    as_json: bool = _JSON,
) -> None:
    """Publish one message; prints its id once it is durable."""
    attrs = {}
    for item in attribute:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--attribute {item!r}: use key=value")
        attrs[key] = value
    msg: dict[str, Any] = {"data": base64.b64encode(message.encode()).decode()}
    if attrs:
        msg["attributes"] = attrs
    if ordering_key:
        msg["orderingKey"] = ordering_key
    body = _run(lambda: Api(project).call("POST", f"topics/{name}:publish", json={"messages": [msg]}))
    _print(body) if as_json else console.print(f"messageIds: {', '.join(body['messageIds'])}")


# -- subscriptions -----------------------------------------------------------------------------
def _kind(sub: dict[str, Any]) -> str:
    if sub.get("bigqueryConfig"):
        return "bigquery → " + sub["bigqueryConfig"]["table"]
    if sub.get("loopmlInferenceConfig"):
        return "inference → " + sub["loopmlInferenceConfig"].get("outputTable", "")
    if (sub.get("pushConfig") or {}).get("pushEndpoint"):
        return "push → " + sub["pushConfig"]["pushEndpoint"]
    return "pull"


@subs_app.command("create")
def sub_create(
    name: str,
    topic: str = typer.Option(..., "--topic", help="Topic name or projects/p/topics/t."),
    bigquery_table: str = typer.Option(
        None, "--bigquery-table", help="project.dataset.table (BigQuery sink)."
    ),
    use_table_schema: bool = typer.Option(False, "--use-table-schema", help="Map JSON fields to columns."),
    write_metadata: bool = typer.Option(False, "--write-metadata"),
    drop_unknown_fields: bool = typer.Option(False, "--drop-unknown-fields"),
    push_endpoint: str = typer.Option(None, "--push-endpoint", help="URL that receives push envelopes."),
    inference_config: Path = typer.Option(
        None, "--inference-config", help="JSON file: loopmlInferenceConfig."
    ),
    ack_deadline: int = typer.Option(10, "--ack-deadline", help="Seconds (10..600)."),
    min_backoff: str = typer.Option(None, "--min-retry-delay", help="e.g. 10s"),
    max_backoff: str = typer.Option(None, "--max-retry-delay", help="e.g. 600s"),
    message_filter: str = typer.Option(None, "--message-filter", help='e.g. attributes.kind = "a"'),
    project: str = _PROJECT,
    as_json: bool = _JSON,
) -> None:
    """Create a pull, push, BigQuery or streaming-inference subscription."""
    api = Api(project)
    body: dict[str, Any] = {
        "topic": topic if "/" in topic else f"projects/{api.project}/topics/{topic}",
        "ackDeadlineSeconds": ack_deadline,
    }
    if sum(x is not None for x in (bigquery_table, push_endpoint, inference_config)) > 1:
        raise typer.BadParameter("give at most one of --bigquery-table, --push-endpoint, --inference-config")
    if bigquery_table:
        body["bigqueryConfig"] = {
            "table": bigquery_table,
            "useTableSchema": use_table_schema,
            "writeMetadata": write_metadata,
            "dropUnknownFields": drop_unknown_fields,
        }
    if push_endpoint:
        body["pushConfig"] = {"pushEndpoint": push_endpoint}
    if inference_config:
        try:
            body["loopmlInferenceConfig"] = json.loads(inference_config.read_text())
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"--inference-config: {exc}") from exc
    if min_backoff or max_backoff:
        body["retryPolicy"] = {
            k: v for k, v in (("minimumBackoff", min_backoff), ("maximumBackoff", max_backoff)) if v
        }
    if message_filter:
        body["filter"] = message_filter
    sub = _run(lambda: api.call("PUT", f"subscriptions/{name}", json=body))
    _print(sub) if as_json else console.print(f"created subscription {sub['name']} ({_kind(sub)})")


@subs_app.command("list")
def sub_list(project: str = _PROJECT, as_json: bool = _JSON) -> None:
    """List subscriptions with their kind, backlog and errors."""
    subs = _run(lambda: Api(project).call("GET", "subscriptions")).get("subscriptions", [])
    if as_json:
        _print(subs)
        return
    table = Table("subscription", "topic", "kind", "backlog", "delivered", "dead letters", "state")
    for s in subs:
        st = s.get("loopmlStatus", {})
        table.add_row(
            _short(s["name"]),
            _short(s["topic"]),
            _kind(s),
            str(st.get("backlog", "")),
            str(st.get("delivered", "")),
            str(st.get("deadLetters", "")),
            s.get("state", ""),
        )
    console.print(table)


@subs_app.command("describe")
def sub_describe(name: str, project: str = _PROJECT, as_json: bool = _JSON, dead_letters: int = 0) -> None:
    """Show a subscription (and, with --dead-letters N, its last N dead letters)."""
    api = Api(project)
    body = _run(lambda: api.call("GET", f"subscriptions/{name}"))
    if dead_letters:
        body["deadLetters"] = _run(
            lambda: api.call("GET", f"subscriptions/{name}:deadLetters", params={"limit": dead_letters})
        )["deadLetters"]
    _print(body) if as_json else _kv(body)


@subs_app.command("delete")
def sub_delete(name: str, project: str = _PROJECT) -> None:
    """Delete a subscription (its cursor and leases go with it)."""
    _run(lambda: Api(project).call("DELETE", f"subscriptions/{name}"))
    console.print(f"deleted subscription {name}")


@subs_app.command("pull")
def sub_pull(
    name: str,
    limit: int = typer.Option(10, "--limit", help="Max messages."),
    auto_ack: bool = typer.Option(False, "--auto-ack", help="Acknowledge what was pulled."),
    project: str = _PROJECT,
    as_json: bool = _JSON,
) -> None:
    """Pull messages from a pull subscription."""
    api = Api(project)
    got = _run(
        lambda: api.call(
            "POST", f"subscriptions/{name}:pull", json={"maxMessages": limit, "returnImmediately": True}
        )
    ).get("receivedMessages", [])
    if auto_ack and got:
        _run(
            lambda: api.call(
                "POST", f"subscriptions/{name}:acknowledge", json={"ackIds": [m["ackId"] for m in got]}
            )
        )
    if as_json:
        _print(got)
        return
    table = Table("messageId", "data", "attributes", "attempt", "ackId")
    for m in got:
        data = base64.b64decode(m["message"].get("data", "")).decode("utf-8", errors="replace")
        table.add_row(
            m["message"]["messageId"],
            data[:80],
            json.dumps(m["message"].get("attributes", {})),
            str(m.get("deliveryAttempt", "")),
            m["ackId"],
        )
    console.print(table)


@subs_app.command("ack")
def sub_ack(name: str, ack_ids: list[str], project: str = _PROJECT) -> None:
    """Acknowledge pulled messages by ack id."""
    _run(lambda: Api(project).call("POST", f"subscriptions/{name}:acknowledge", json={"ackIds": ack_ids}))
    console.print(f"acknowledged {len(ack_ids)} message(s)")


def _kv(body: dict[str, Any]) -> None:
    table = Table(show_header=False)
    for key, value in body.items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    console.print(table)
