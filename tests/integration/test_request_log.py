"""The request logger against a real DuckDB warehouse: schema, naming, bounded queue, drain on stop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from loopml.errors import InvalidArgument
from loopml.serving.request_log import RequestLogger, destination, validate_logging_config
from loopml.serving.spec import EndpointSpec
from loopml.warehouse import Warehouse

EP = "projects/p1/locations/us-central1/endpoints/42"


def _spec(config: dict, display_name: str = "My endpoint-1") -> EndpointSpec:
    return EndpointSpec(
        endpoint_name=EP, endpoint_id="42", display_name=display_name, traffic_split={}, logging_config=config
    )


@pytest.fixture()
def warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    wh = Warehouse(tmp_path / "wh.duckdb")
    yield wh
    wh.close()


def test_rows_land_in_default_dataset_with_vertex_schema(warehouse: Warehouse) -> None:
    logger = RequestLogger(warehouse, flush_s=0.05)
    logger.start()
    spec = _spec({"enabled": True, "samplingRate": 1.0, "bigqueryDestination": {"outputUri": "bq://p1"}})
    for i in range(50):
        req = orjson.dumps({"instances": [[i, 1.5], {"a": i}]})
        resp = orjson.dumps({"predictions": [i % 2, None], "deployedModelId": "7"})
        assert logger.submit(spec, "7", req, resp)
    assert logger.submit(spec, "7", b"raw \xff body", b"not json")
    logger.stop()
    assert logger.stats() == {"submitted": 51, "written": 51, "dropped": 0, "failed": 0, "queued": 0}
    dataset = "logging_My_endpoint_1_42"
    schema = warehouse.get_table_schema("p1", dataset, "request_response_logging")
    assert [(f["name"], f["type"], f.get("mode")) for f in schema] == [
        ("endpoint", "STRING", "NULLABLE"),
        ("deployed_model_id", "STRING", "NULLABLE"),
        ("logging_time", "TIMESTAMP", "NULLABLE"),
        ("request_id", "NUMERIC", "NULLABLE"),
        ("request_payload", "STRING", "REPEATED"),
        ("response_payload", "STRING", "REPEATED"),
    ]
    rows = warehouse.read_table_arrow("p1", dataset, "request_response_logging").to_pylist()
    assert len(rows) == 51 and len({r["request_id"] for r in rows}) == 51
    first = next(r for r in rows if r["request_payload"] == ["[3,1.5]", '{"a":3}'])
    assert first["response_payload"] == ["1", "null"] and first["endpoint"] == EP
    raw = next(r for r in rows if r["response_payload"] == ["not json"])
    assert raw["request_payload"] == ["raw \ufffd body"]


def test_full_queue_drops_and_counts_instead_of_blocking(warehouse: Warehouse) -> None:
    logger = RequestLogger(warehouse, max_queue=5)  # not started: nothing drains the queue
    spec = _spec({"enabled": True, "bigqueryDestination": {"outputUri": "bq://p1.logs.t"}})
    accepted = [logger.submit(spec, "7", b'{"instances": [1]}', b'{"predictions": [2]}') for _ in range(20)]
    assert accepted.count(True) == 5
    assert logger.stats()["dropped"] == 15
    logger.stop()  # writes what was queued
    assert warehouse.read_table_arrow("p1", "logs", "t").num_rows == 5


def test_disabled_config_and_bad_destinations(warehouse: Warehouse) -> None:
    logger = RequestLogger(warehouse)
    assert not logger.submit(_spec({"enabled": False}), "7", b"{}", b"{}")
    assert not logger.submit(_spec({}), "7", b"{}", b"{}")
    assert destination({"enabled": True}, EP, "x").uri() == "bq://p1.logging_x_42.request_response_logging"
    assert destination({"bigqueryDestination": {"outputUri": "bq://q.d"}}, EP, "x").uri() == (
        "bq://q.d.request_response_logging"
    )
    with pytest.raises(InvalidArgument, match="samplingRate"):
        validate_logging_config({"enabled": True, "samplingRate": 0})
    with pytest.raises(InvalidArgument, match="outputUri"):
        validate_logging_config({"enabled": True, "bigqueryDestination": {"outputUri": "gs://nope"}})
    validate_logging_config(
        {"enabled": True, "samplingRate": 0.5, "bigqueryDestination": {"outputUri": "bq://p"}}
    )
