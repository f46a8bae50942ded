"""kill -9 mid-stream: every message that got a messageId ends up in the table exactly once, and
is pushed to the push subscription's endpoint at least once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

P = "durable"


def bq(url: str) -> bigquery.Client:
    return bigquery.Client(
        project=P, credentials=AnonymousCredentials(), client_options=ClientOptions(api_endpoint=url)
    )


def publisher(url: str, worker: int, acked: list[str], stop: threading.Event) -> None:
    """Publish until the server dies; keep only ids from answered requests."""
    with httpx.Client(base_url=url, timeout=10) as http:
        i = 0
        while not stop.is_set():
            i += 1
            body: Any = (
                {"worker": worker, "i": i}
                if i % 3
                else [{"worker": worker, "i": i, "j": j} for j in range(5)]
            )
            try:
                resp = http.post("/ingest/stream-topic/json", json=body)
            except httpx.HTTPError:
                return  # the server is gone: what was not answered was never acknowledged
            if resp.status_code != 200:
                return
            acked.extend(resp.json()["messageIds"])


def wait_caught_up(url: str, name: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=10) as http:
        while time.monotonic() < deadline:
            sub = http.get(f"/v1/projects/{P}/subscriptions/{name}").json()
            if sub["loopmlStatus"]["backlog"] == 0:
                return sub
            time.sleep(0.2)
    raise AssertionError(f"subscription did not catch up: {sub}")


class Receiver(BaseHTTPRequestHandler):
    received: set[str] = set()
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = orjson.loads(self.rfile.read(int(self.headers["content-length"])))
        with self.lock:
            self.received.add(body["message"]["messageId"])
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture()
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/push"
    server.shutdown()
    server.server_close()


def test_kill_9_loses_no_acknowledged_message(server_factory: Any, receiver: str) -> None:
    srv = server_factory(env={"LOOPML_DEFAULT_PROJECT": P})
    client = bq(srv.url)
    client.create_dataset("sink")
    schema = [
        bigquery.SchemaField("worker", "INTEGER"),
        bigquery.SchemaField("i", "INTEGER"),
        bigquery.SchemaField("j", "INTEGER"),
        bigquery.SchemaField("subscription_name", "STRING"),
        bigquery.SchemaField("message_id", "STRING"),
        bigquery.SchemaField("publish_time", "TIMESTAMP"),
        bigquery.SchemaField("attributes", "STRING"),
    ]
    client.create_table(bigquery.Table(f"{P}.sink.stream", schema=schema))
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        assert http.put(f"/v1/projects/{P}/topics/stream-topic").status_code == 200
        r = http.put(
            f"/v1/projects/{P}/subscriptions/stream-to-table",
            json={
                "topic": f"projects/{P}/topics/stream-topic",
                "bigqueryConfig": {
                    "table": f"{P}.sink.stream",
                    "useTableSchema": True,
                    "writeMetadata": True,
                },
            },
        )
        assert r.status_code == 200, r.text
        r = http.put(
            f"/v1/projects/{P}/subscriptions/stream-push",
            json={
                "topic": f"projects/{P}/topics/stream-topic",
                "pushConfig": {"pushEndpoint": receiver},
                "retryPolicy": {"minimumBackoff": "0.1s", "maximumBackoff": "1s"},
            },
        )
        assert r.status_code == 200, r.text

    acked: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=publisher, args=(srv.url, w, acked, stop)) for w in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 2000 and time.monotonic() < deadline:
        time.sleep(0.02)
    srv.kill()  # SIGKILL while publishers and the BigQuery subscription are running
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(acked) >= 1000, "the stream was too short to mean anything"

    srv.start()  # same home, same port
    sub = wait_caught_up(srv.url, "stream-to-table")
    assert sub["loopmlStatus"]["deadLetters"] == 0
    rows = (
        bq(srv.url)
        .query(f"SELECT message_id, COUNT(*) AS n FROM `{P}.sink.stream` GROUP BY message_id")
        .result()
    )
    counts = {row["message_id"]: row["n"] for row in rows}
    missing = set(acked) - set(counts)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
    dupes = {k: n for k, n in counts.items() if n != 1}
    assert not dupes, f"duplicated rows: {list(dupes.items())[:5]}"
    push = wait_caught_up(srv.url, "stream-push")
    assert push["loopmlStatus"]["outstanding"] == 0
    not_pushed = set(acked) - Receiver.received
    assert not not_pushed, (
        f"{len(not_pushed)} acknowledged messages never pushed, e.g. {sorted(not_pushed)[:5]}"
    )
    # the stream continues after the restart, with fresh ids
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        (new_id,) = http.post("/ingest/stream-topic", json={"worker": 99, "i": 0}).json()["messageIds"]
    assert int(new_id) > max(int(x) for x in acked)


@pytest.fixture(autouse=True)
def _no_gce(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_GCE_CHECK", "true")
