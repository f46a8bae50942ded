"""Push delivery to a real HTTP server on loopback, and persistent prediction failures."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from loopml.ingest import IngestService
from loopml.warehouse import Warehouse
from tests.integration.test_ingest_log import P, msg, run, wait_until


class Receiver(BaseHTTPRequestHandler):
    """Fails each message's first two deliveries (500, then a dropped 400), then answers 204."""

    seen: Counter[str] = Counter()
    accepted: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = orjson.loads(self.rfile.read(int(self.headers["content-length"])))
        mid = body["message"]["messageId"]
        with self.lock:
            self.seen[mid] += 1
            attempt = self.seen[mid]
        if attempt < 3:
            self.send_response(500 if attempt == 1 else 400)
            self.end_headers()
            return
        with self.lock:
            self.accepted[mid] = body
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


def test_push_retries_with_backoff_until_2xx_and_sends_the_pubsub_envelope(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/push"

    async def body() -> None:
        svc = IngestService(tmp_path / "ingest.db")
        await svc.start()
        await svc.create_topic(P, "pushed")
        await svc.create_subscription(
            P,
            "to-service",
            {
                "topic": f"projects/{P}/topics/pushed",
                "pushConfig": {"pushEndpoint": url},
                "retryPolicy": {"minimumBackoff": "0.05s", "maximumBackoff": "0.2s"},
                "filter": 'NOT attributes.skip = "yes"',
            },
        )
        ids = await svc.publish(P, "pushed", [msg({"n": i}, k=str(i)) for i in range(20)])
        await svc.publish(P, "pushed", [msg({"n": 99}, skip="yes")])
        sub = svc.sub(P, "to-service")
        await wait_until(lambda: len(Receiver.accepted) == 20 and svc.status(sub)["outstanding"] == 0)
        await asyncio.sleep(0.3)
        assert sorted(Receiver.accepted) == sorted(ids)
        assert (
            all(n == 3 for n in Receiver.seen.values()) and len(Receiver.seen) == 20
        )  # filtered one never sent
        env = Receiver.accepted[ids[4]]
        assert env["subscription"] == f"projects/{P}/subscriptions/to-service"
        m = env["message"]
        assert orjson.loads(base64.b64decode(m["data"])) == {"n": 4} and m["attributes"] == {"k": "4"}
        assert m["messageId"] == m["message_id"] == ids[4] and m["publishTime"] == m["publish_time"]
        assert svc.get_subscription(P, "to-service")["state"] == "ACTIVE"
        await svc.stop()

    try:
        run(body)
    finally:
        server.shutdown()
        server.server_close()


def test_persistent_prediction_failures_become_dead_letters(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh.duckdb")
    wh.create_dataset(P, "sink")
    wh.create_table(P, "sink", "scored", [{"name": "x", "type": "FLOAT"}, {"name": "y", "type": "STRING"}])
    attempts: list[int] = []

    async def predict(endpoint: str, instances: list[Any]) -> dict[str, Any]:
        attempts.append(len(instances))
        raise RuntimeError("endpoint has no deployed model")

    async def body() -> None:
        svc = IngestService(tmp_path / "ingest.db", warehouse=lambda: wh, predict=predict)
        await svc.start()
        await svc.create_topic(P, "scoring")
        await svc.create_subscription(
            P,
            "infer",
            {
                "topic": f"projects/{P}/topics/scoring",
                "retryPolicy": {"minimumBackoff": "0.05s", "maximumBackoff": "0.1s"},
                "loopmlInferenceConfig": {
                    "endpoint": f"projects/{P}/locations/l1/endpoints/e1",
                    "instanceFields": {"x": "x"},
                    "outputTable": f"{P}.sink.scored",
                    "outputFields": {"y": "prediction"},
                    "maxAttempts": 3,
                },
            },
        )
        await svc.publish(P, "scoring", [msg({"x": 1.0}), msg({"x": 2.0})])
        sub = svc.sub(P, "infer")
        await wait_until(lambda: svc.status(sub)["backlog"] == 0)
        dead = svc.dead_letters(P, "infer")
        assert len(dead) == 2 and all(
            "no deployed model" in d["error"] and "3 attempts" in d["error"] for d in dead
        )
        assert svc.get_subscription(P, "infer")["state"] == "RESOURCE_ERROR"
        await svc.stop()

    run(body)
    assert attempts == [2, 2, 2]
    assert wh.query(f"SELECT COUNT(*) FROM `{P}.sink.scored`", project=P).table.column(0)[0].as_py() == 0
    wh.close()


def test_a_bad_instance_is_isolated_and_the_rest_of_the_batch_is_scored(tmp_path: Path) -> None:
    from loopml.errors import InvalidArgument

    wh = Warehouse(tmp_path / "wh.duckdb")
    wh.create_dataset(P, "sink")
    wh.create_table(P, "sink", "scored", [{"name": "x", "type": "FLOAT"}, {"name": "y", "type": "FLOAT"}])

    async def predict(endpoint: str, instances: list[Any]) -> dict[str, Any]:
        if any(i["x"] < 0 for i in instances):
            raise InvalidArgument("x must be positive")
        return {"predictions": [i["x"] * 10 for i in instances]}

    async def body() -> None:
        svc = IngestService(tmp_path / "ingest.db", warehouse=lambda: wh, predict=predict)
        await svc.start()
        await svc.create_topic(P, "scoring")
        await svc.create_subscription(
            P,
            "infer",
            {
                "topic": f"projects/{P}/topics/scoring",
                "loopmlInferenceConfig": {
                    "endpoint": f"projects/{P}/locations/l1/endpoints/e1",
                    "instanceFields": {"x": "x"},
                    "outputTable": f"{P}.sink.scored",
                    "outputFields": {"y": "prediction"},
                },
            },
        )
        await svc.publish(P, "scoring", [msg({"x": v}) for v in (1.0, -2.0, 3.0)])
        sub = svc.sub(P, "infer")
        await wait_until(lambda: svc.status(sub)["backlog"] == 0)
        (dead,) = svc.dead_letters(P, "infer")
        assert "x must be positive" in dead["error"]
        assert orjson.loads(base64.b64decode(dead["message"]["data"])) == {"x": -2.0}
        await svc.stop()

    run(body)
    rows = wh.query(f"SELECT x, y FROM `{P}.sink.scored` ORDER BY x", project=P).table.to_pylist()
    assert rows == [{"x": 1.0, "y": 10.0}, {"x": 3.0, "y": 30.0}]
    wh.close()
