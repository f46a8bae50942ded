"""Pub/Sub REST surface against a real server: topics, subscriptions, publish, pull, ack, errors."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

P = "proj1"


@pytest.fixture(scope="module")
def http(server: object) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:  # type: ignore[attr-defined]
        yield client


def b64(obj: object) -> str:
    return base64.b64encode(orjson.dumps(obj)).decode()


def test_topic_lifecycle(http: httpx.Client) -> None:
    r = http.put(f"/v1/projects/{P}/topics/life-topic", json={"labels": {"team": "a"}})
    assert r.status_code == 200, r.text
    assert r.json() == {"name": f"projects/{P}/topics/life-topic", "labels": {"team": "a"}}
    assert http.put(f"/v1/projects/{P}/topics/life-topic").status_code == 409
    assert http.get(f"/v1/projects/{P}/topics/life-topic").json()["labels"] == {"team": "a"}
    names = [t["name"] for t in http.get(f"/v1/projects/{P}/topics").json()["topics"]]
    assert f"projects/{P}/topics/life-topic" in names
    assert http.delete(f"/v1/projects/{P}/topics/life-topic").status_code == 200
    r = http.get(f"/v1/projects/{P}/topics/life-topic")
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"


def test_publish_pull_ack_and_redelivery(http: httpx.Client) -> None:
    assert http.put(f"/v1/projects/{P}/topics/topic-1").status_code == 200
    r = http.put(
        f"/v1/projects/{P}/subscriptions/sub-1",
        json={"topic": f"projects/{P}/topics/topic-1", "ackDeadlineSeconds": 10},
    )
    assert r.status_code == 200, r.text
    assert r.json()["pushConfig"] == {} and r.json()["ackDeadlineSeconds"] == 10
    r = http.post(
        f"/v1/projects/{P}/topics/topic-1:publish",
        json={"messages": [{"data": b64({"n": i}), "attributes": {"k": str(i)}} for i in range(3)]},
    )
    assert r.status_code == 200, r.text
    ids = r.json()["messageIds"]
    assert len(ids) == 3 and len(set(ids)) == 3
    r = http.post(f"/v1/projects/{P}/subscriptions/sub-1:pull", json={"maxMessages": 10})
    got = r.json()["receivedMessages"]
    assert [m["message"]["messageId"] for m in got] == ids  # in publish order
    assert [orjson.loads(base64.b64decode(m["message"]["data"]))["n"] for m in got] == [0, 1, 2]
    assert got[0]["message"]["attributes"] == {"k": "0"} and got[0]["deliveryAttempt"] == 1
    assert got[0]["message"]["publishTime"].endswith("Z")
    # ack the first, nack (deadline 0) the second, leave the third leased
    assert (
        http.post(
            f"/v1/projects/{P}/subscriptions/sub-1:acknowledge", json={"ackIds": [got[0]["ackId"]]}
        ).json()
        == {}
    )
    r = http.post(
        f"/v1/projects/{P}/subscriptions/sub-1:modifyAckDeadline",
        json={"ackIds": [got[1]["ackId"]], "ackDeadlineSeconds": 0},
    )
    assert r.status_code == 200
    again = http.post(f"/v1/projects/{P}/subscriptions/sub-1:pull", json={"maxMessages": 10}).json()
    assert [m["message"]["messageId"] for m in again["receivedMessages"]] == [ids[1]]
    assert again["receivedMessages"][0]["deliveryAttempt"] == 2
    status = http.get(f"/v1/projects/{P}/subscriptions/sub-1").json()["loopmlStatus"]
    assert status["outstanding"] == 2
    r = http.post(
        f"/v1/projects/{P}/subscriptions/sub-1:pull", json={"maxMessages": 5, "returnImmediately": True}
    )
    assert r.status_code == 200 and r.json() == {}


def test_subscription_filter_on_attributes(http: httpx.Client) -> None:
    http.put(f"/v1/projects/{P}/topics/topic-2")
    r = http.put(
        f"/v1/projects/{P}/subscriptions/sub-2",
        json={"topic": f"projects/{P}/topics/topic-2", "filter": 'attributes.kind = "keep"'},
    )
    assert r.status_code == 200, r.text
    msgs = [{"data": b64(i), "attributes": {"kind": "keep" if i % 2 else "drop"}} for i in range(6)]
    http.post(f"/v1/projects/{P}/topics/topic-2:publish", json={"messages": msgs})
    got = http.post(f"/v1/projects/{P}/subscriptions/sub-2:pull", json={"maxMessages": 10}).json()[
        "receivedMessages"
    ]
    assert [orjson.loads(base64.b64decode(m["message"]["data"])) for m in got] == [1, 3, 5]


def test_ingest_json_proxy(http: httpx.Client) -> None:
    http.put("/v1/projects/local/topics/hyp")
    http.put("/v1/projects/local/subscriptions/hyp-pull", json={"topic": "projects/local/topics/hyp"})
    event = {"event": "purchase", "user_id": "UID00003"}
    r = http.post("/ingest/hyp/json", json=event)
    assert r.status_code == 200, r.text
    assert r.json()["message"] == "pubsub message sent: " + orjson.dumps(event).decode()
    r = http.post("/ingest/hyp", json=[{"i": 1}, {"i": 2}])
    assert r.status_code == 200 and len(r.json()["messageIds"]) == 2
    got = http.post("/v1/projects/local/subscriptions/hyp-pull:pull", json={"maxMessages": 10}).json()
    datas = [orjson.loads(base64.b64decode(m["message"]["data"])) for m in got["receivedMessages"]]
    assert datas == [event, {"i": 1}, {"i": 2}]
    # topics are per project: ?project= selects another one
    http.put(f"/v1/projects/{P}/topics/hyp")
    assert http.post(f"/ingest/hyp/json?project={P}", json=event).status_code == 200


def test_ingest_takes_only_objects_and_writes_nothing_else(http: httpx.Client) -> None:
    """A bare scalar, or an array with a non-object element, is a 400 naming it; nothing is written."""
    http.put(f"/v1/projects/{P}/topics/objs")
    sub = {"topic": f"projects/{P}/topics/objs"}
    assert http.put(f"/v1/projects/{P}/subscriptions/objs-pull", json=sub).status_code == 200
    for body, needle in [
        (b"42", "The request body is a number, not a JSON object"),
        (b'"x"', "The request body is a string, not a JSON object"),
        (b"null", "The request body is null, not a JSON object"),
        (b"true", "The request body is a boolean, not a JSON object"),
        (b'[{"i": 0}, {"i": 1}, 7]', "Element 2 of the JSON array is a number, not an object"),
        (b'[{"i": 0}, null]', "Element 1 of the JSON array is null, not an object"),
    ]:
        for route in ("/json", ""):
            r = http.post(f"/ingest/objs{route}?project={P}", content=body)
            assert r.status_code == 400, (body, r.text)
            error = r.json()["error"]
            assert error["status"] == "INVALID_ARGUMENT" and needle in error["message"], error
    # nothing above reached the log: the first message delivered is the first valid one
    assert http.post(f"/ingest/objs/json?project={P}", json=[{"i": "ok"}]).status_code == 200
    got = http.post(f"/v1/projects/{P}/subscriptions/objs-pull:pull", json={"maxMessages": 50}).json()
    datas = [orjson.loads(base64.b64decode(m["message"]["data"])) for m in got["receivedMessages"]]
    assert datas == [{"i": "ok"}]


def test_concurrent_publishes_through_both_routes_keep_every_field(server: object) -> None:
    """Many clients at once (so group commits merge their messages into shared segments), through
    `:publish` (attributes, ordering keys) and `/ingest` (arrays): every acknowledged id delivers its
    own data, attributes and key, in id order."""
    url = server.url  # type: ignore[attr-defined]
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.put(f"/v1/projects/{P}/topics/busy").status_code == 200
        sub = {"topic": f"projects/{P}/topics/busy"}
        assert http.put(f"/v1/projects/{P}/subscriptions/busy-pull", json=sub).status_code == 200
    expected: dict[str, tuple[object, dict[str, str], str | None]] = {}
    lock = threading.Lock()

    def client(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            for i in range(15):
                got: list[tuple[object, dict[str, str], str | None]]
                if i % 3 == 0:
                    batch = [{"w": worker, "i": i, "j": j} for j in range(7)]
                    r = http.post(f"/ingest/busy/json?project={P}", json=batch)
                    assert r.status_code == 200, r.text
                    got = [(e, {}, None) for e in batch]
                else:
                    msgs = [
                        {"data": b64({"w": worker, "i": i, "j": j}), "attributes": {"j": str(j)} if j else {}}
                        | ({"orderingKey": f"k{worker}"} if i % 2 else {})
                        for j in range(i % 4 + 1)
                    ]
                    r = http.post(f"/v1/projects/{P}/topics/busy:publish", json={"messages": msgs})
                    assert r.status_code == 200, r.text
                    got = [
                        (
                            {"w": worker, "i": i, "j": j},
                            {"j": str(j)} if j else {},
                            f"k{worker}" if i % 2 else None,
                        )
                        for j in range(i % 4 + 1)
                    ]
                ids = r.json()["messageIds"]
                assert len(ids) == len(got)
                with lock:
                    expected.update(zip(ids, got, strict=True))

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    received: dict[str, tuple[object, dict[str, str], str | None]] = {}
    order: list[int] = []
    with httpx.Client(base_url=url, timeout=30) as http:
        while len(received) < len(expected):
            r = http.post(f"/v1/projects/{P}/subscriptions/busy-pull:pull", json={"maxMessages": 1000})
            pulled = r.json().get("receivedMessages", [])
            assert pulled, f"only {len(received)} of {len(expected)} messages delivered"
            for m in pulled:
                msg = m["message"]
                received[msg["messageId"]] = (
                    orjson.loads(base64.b64decode(msg["data"])),
                    msg["attributes"],
                    msg.get("orderingKey"),
                )
                order.append(int(msg["messageId"]))
            ack = {"ackIds": [m["ackId"] for m in pulled]}
            assert (
                http.post(f"/v1/projects/{P}/subscriptions/busy-pull:acknowledge", json=ack).status_code
                == 200
            )
        r = http.post(f"/v1/projects/{P}/topics/busy:publish", content=b'{"messages": [')
        assert r.status_code == 400 and "Malformed JSON" in r.json()["error"]["message"]
    assert received == expected
    assert order == sorted(order)


def test_bad_input(http: httpx.Client) -> None:
    r = http.post("/ingest/hyp/json", content=b"{not json")
    assert r.status_code == 400 and "Malformed JSON" in r.json()["error"]["message"]
    assert http.post("/ingest/no-such-topic/json", json={}).status_code == 404
    assert (
        http.post(f"/v1/projects/{P}/topics/nope:publish", json={"messages": [{"data": "eA=="}]}).status_code
        == 404
    )
    r = http.post(f"/v1/projects/{P}/topics/topic-1:publish", json={"messages": [{"data": "***"}]})
    assert r.status_code == 400 and "messages[0].data" in r.json()["error"]["message"]
    r = http.post(f"/v1/projects/{P}/topics/topic-1:publish", json={"messages": []})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    cases = [
        ({"topic": f"projects/{P}/topics/topic-1", "ackDeadlineSeconds": 5}, "ackDeadlineSeconds"),
        (
            {"topic": f"projects/{P}/topics/topic-1", "pushConfig": {"pushEndpoint": "ftp://x"}},
            "pushConfig.pushEndpoint",
        ),
        (
            {"topic": f"projects/{P}/topics/topic-1", "bigqueryConfig": {"table": "only.two"}},
            "bigqueryConfig.table",
        ),
        (
            {"topic": f"projects/{P}/topics/topic-1", "retryPolicy": {"minimumBackoff": "ten"}},
            "retryPolicy.minimumBackoff",
        ),
        ({"topic": f"projects/{P}/topics/topic-1", "filter": 'attributes.k = "v" AND ('}, "filter"),
        ({"topic": f"projects/{P}/topics/topic-1", "bogus": 1}, "bogus"),
        ({"topic": "projects/x"}, "topic"),
        (
            {"topic": f"projects/{P}/topics/topic-1", "loopmlInferenceConfig": {"endpoint": "e1"}},
            "loopmlInferenceConfig.endpoint",
        ),
    ]
    for body, field in cases:
        r = http.put(f"/v1/projects/{P}/subscriptions/bad-sub", json=body)
        assert r.status_code == 400, (body, r.text)
        assert field in r.json()["error"]["message"], (field, r.text)
    assert http.get(f"/v1/projects/{P}/subscriptions/bad-sub").status_code == 404
    r = http.put(f"/v1/projects/{P}/subscriptions/to-nowhere", json={"topic": f"projects/{P}/topics/missing"})
    assert r.status_code == 404


def test_new_subscription_starts_at_the_head(http: httpx.Client) -> None:
    http.put(f"/v1/projects/{P}/topics/topic-3")
    http.post(f"/v1/projects/{P}/topics/topic-3:publish", json={"messages": [{"data": b64("old")}]})
    http.put(f"/v1/projects/{P}/subscriptions/sub-3", json={"topic": f"projects/{P}/topics/topic-3"})
    http.post(f"/v1/projects/{P}/topics/topic-3:publish", json={"messages": [{"data": b64("new")}]})
    got = http.post(f"/v1/projects/{P}/subscriptions/sub-3:pull", json={"maxMessages": 10}).json()[
        "receivedMessages"
    ]
    assert [orjson.loads(base64.b64decode(m["message"]["data"])) for m in got] == ["new"]
    assert http.get(f"/v1/projects/{P}/topics/topic-3/subscriptions").json() == {
        "subscriptions": [f"projects/{P}/subscriptions/sub-3"]
    }
    assert http.delete(f"/v1/projects/{P}/subscriptions/sub-3").status_code == 200
    assert http.get(f"/v1/projects/{P}/subscriptions/sub-3").status_code == 404


def test_bigquery_subscription_keeps_good_rows_and_records_bad_ones(http: httpx.Client) -> None:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    client = bigquery.Client(
        project=P,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=str(http.base_url)),
    )
    client.create_dataset("typed")
    schema = [bigquery.SchemaField("n", "INTEGER", mode="REQUIRED"), bigquery.SchemaField("ts", "TIMESTAMP")]
    client.create_table(bigquery.Table(f"{P}.typed.rows", schema=schema))
    http.put(f"/v1/projects/{P}/topics/typed-topic")
    r = http.put(
        f"/v1/projects/{P}/subscriptions/typed-sub",
        json={
            "topic": f"projects/{P}/topics/typed-topic",
            "bigqueryConfig": {"table": f"{P}.typed.rows", "useTableSchema": True},
        },
    )
    assert r.status_code == 200, r.text
    events = [
        {"n": "1", "ts": "2020-11-16 10:00:00"},
        {"n": "one"},
        {"n": 2, "extra": True},
        {"n": 3},
    ]
    assert http.post(f"/ingest/typed-topic?project={P}", json=events).status_code == 200
    # /ingest takes only objects; a non-object message can still arrive through :publish
    not_object = {"messages": [{"data": base64.b64encode(b"[1,2]").decode()}]}
    assert http.post(f"/v1/projects/{P}/topics/typed-topic:publish", json=not_object).status_code == 200
    deadline = time.monotonic() + 60
    while http.get(f"/v1/projects/{P}/subscriptions/typed-sub").json()["loopmlStatus"]["backlog"] and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    rows = client.query(f"SELECT n FROM `{P}.typed.rows` ORDER BY n").result()
    assert [row["n"] for row in rows] == [1, 3]
    dead = http.get(f"/v1/projects/{P}/subscriptions/typed-sub:deadLetters").json()["deadLetters"]
    assert len(dead) == 3
    payloads = sorted(base64.b64decode(d["message"]["data"]) for d in dead)
    assert payloads == sorted([b'{"n":"one"}', b'{"n":2,"extra":true}', b"[1,2]"])
    assert all(d["error"] for d in dead)
    assert http.get(f"/v1/projects/{P}/subscriptions/typed-sub").json()["state"] == "RESOURCE_ERROR"
