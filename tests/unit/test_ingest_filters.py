"""Filter and mapping expressions, and subscription config validation (pure)."""

from __future__ import annotations

import pytest

from loopml.errors import InvalidArgument
from loopml.ingest.filters import compile_expression, parse_path
from loopml.ingest.resources import TableRef, parse_duration, parse_subscription

ATTRS = {"attributes": {"kind": "order", "region": "eu-west", "n": "3"}}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('attributes.kind = "order"', True),
        ('attributes.kind != "order"', False),
        ("attributes:region", True),
        ("attributes:missing", False),
        ('NOT attributes.kind = "refund"', True),
        ('attributes.kind = "order" AND hasPrefix(attributes.region, "eu")', True),
        ('attributes.kind = "refund" OR (attributes:region AND NOT attributes.n = "4")', True),
        ('attributes.missing = "x"', False),
        ('attributes.missing != "x"', True),
    ],
)
def test_attribute_filters(expr: str, expected: bool) -> None:
    assert compile_expression(expr)(ATTRS) is expected


def test_json_paths_comparisons_and_values() -> None:
    env = {"prediction": {"nearest_centroid_id": [1.0], "scores": [0.2, 0.8]}, "data": {"event": "purchase"}}
    assert compile_expression("prediction.nearest_centroid_id[0] == 1")(env) is True
    assert compile_expression("prediction.nearest_centroid_id[0] = 2")(env) is False
    assert compile_expression("prediction.scores[-1] > 0.5")(env) is True
    assert compile_expression("prediction.scores")(env) == [0.2, 0.8]
    assert compile_expression('data.event = "purchase" AND prediction.scores[1] >= 0.8')(env) is True
    assert compile_expression("prediction.scores[5]")(env) is None
    assert compile_expression("prediction.flag = true")({"prediction": {"flag": True}}) is True
    assert compile_expression("prediction.flag = 1")({"prediction": {"flag": True}}) is False
    assert str(parse_path("ecommerce.purchase.items[0].item_id")) == "ecommerce.purchase.items[0].item_id"


@pytest.mark.parametrize(
    "bad", ["", "attributes.k = ", 'attributes.k = "v" AND (', "a.b[x]", "a = 'x' junk", "__import__('os')"]
)
def test_bad_expressions_are_400s(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        compile_expression(bad, "field 'filter'")


def test_table_refs_and_durations() -> None:
    assert str(TableRef.parse("p.ds.t", "t")) == "p.ds.t"
    assert TableRef.parse("my-proj:ds.t", "t") == TableRef("my-proj", "ds", "t")
    for bad in ("ds.t", "p.ds.t.x", "p.d-s.t", 3):
        with pytest.raises(InvalidArgument, match=r"bigqueryConfig\.table"):
            TableRef.parse(bad, "bigqueryConfig.table")
    assert (
        parse_duration("10s", "x") == 10.0
        and parse_duration("0.5s", "x") == 0.5
        and parse_duration(3, "x") == 3
    )
    for bad in ("10", "10m", "601s", -1):
        with pytest.raises(InvalidArgument):
            parse_duration(bad, "retryPolicy.minimumBackoff")


def test_subscription_specs() -> None:
    name, topic = "projects/p/subscriptions/s", "projects/p/topics/t"
    spec = parse_subscription({"topic": topic}, name, topic)
    assert (
        spec.kind == "pull"
        and spec.resource["ackDeadlineSeconds"] == 10
        and spec.resource["pushConfig"] == {}
    )
    spec = parse_subscription(
        {
            "topic": topic,
            "pushConfig": {"pushEndpoint": "http://127.0.0.1:9/x"},
            "retryPolicy": {"minimumBackoff": "10s"},
        },
        name,
        topic,
    )
    assert spec.kind == "push" and (spec.min_backoff, spec.max_backoff) == (10.0, 600.0)
    spec = parse_subscription(
        {"topic": topic, "bigqueryConfig": {"table": "p:ds.t", "writeMetadata": True}}, name, topic
    )
    assert spec.kind == "bigquery" and spec.write_metadata and not spec.use_table_schema
    with pytest.raises(InvalidArgument, match="at most one"):
        parse_subscription(
            {
                "topic": topic,
                "pushConfig": {"pushEndpoint": "http://x"},
                "bigqueryConfig": {"table": "p.d.t"},
            },
            name,
            topic,
        )
    with pytest.raises(InvalidArgument, match=r"bigqueryConfig\.useTableSchema"):
        parse_subscription(
            {"topic": topic, "bigqueryConfig": {"table": "p.d.t", "useTableSchema": "yes"}}, name, topic
        )
    with pytest.raises(InvalidArgument, match=r"outputFields\.anomaly"):
        parse_subscription(
            {
                "topic": topic,
                "loopmlInferenceConfig": {
                    "endpoint": "projects/p/locations/l/endpoints/1",
                    "instanceFields": {"x": "x"},
                    "outputTable": "p.d.t",
                    "outputFields": {"anomaly": "prediction.id[0] =="},
                },
            },
            name,
            topic,
        )
