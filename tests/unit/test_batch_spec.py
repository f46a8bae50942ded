"""Pure pieces of batch prediction: request parsing, instance building, matrices, output naming."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from loopml.errors import InvalidArgument, Unimplemented
from loopml.serving.batch.chunk import JSON_COLUMN, InstanceOptions, predict_chunk, prepare, to_matrix
from loopml.serving.batch.outputs import prediction_array
from loopml.serving.batch.service import stamps
from loopml.serving.batch.spec import BqRef, parse_bq_uri, parse_job, sanitize_name


def _body(**over: object) -> dict:
    body = {
        "displayName": "j",
        "model": "projects/p/locations/l/models/m@2",
        "inputConfig": {"instancesFormat": "bigquery", "bigquerySource": {"inputUri": "bq://p.d.t"}},
        "outputConfig": {"predictionsFormat": "bigquery", "bigqueryDestination": {"outputUri": "bq://p"}},
    }
    body.update(over)
    return body


def test_defaults_follow_vertex() -> None:
    spec = parse_job(_body())
    assert spec.batch_size == 64 and spec.max_replica_count == 10 and spec.starting_replica_count == 1
    assert spec.bq_source == BqRef("p", "d", "t") and spec.bq_destination == BqRef("p")
    spec = parse_job(
        _body(manualBatchTuningParameters={"batchSize": 8}, dedicatedResources={"maxReplicaCount": 3})
    )
    assert spec.batch_size == 8 and spec.max_replica_count == 3


def test_bad_requests_name_the_field() -> None:
    with pytest.raises(Unimplemented, match="tf-record"):
        parse_job(_body(inputConfig={"instancesFormat": "tf-record"}))
    with pytest.raises(InvalidArgument, match=r"gcsSource\.uris"):
        parse_job(_body(inputConfig={"instancesFormat": "jsonl"}))
    with pytest.raises(InvalidArgument, match="table name is generated"):
        parse_job(
            _body(
                outputConfig={
                    "predictionsFormat": "bigquery",
                    "bigqueryDestination": {"outputUri": "bq://p.d.t"},
                }
            )
        )
    with pytest.raises(InvalidArgument, match="batchSize"):
        parse_job(_body(manualBatchTuningParameters={"batchSize": "many"}))
    with pytest.raises(InvalidArgument, match="startingReplicaCount"):
        parse_job(_body(dedicatedResources={"startingReplicaCount": 5, "maxReplicaCount": 2}))
    for uri in ("p.d.t", "bq://", "bq://p..t", "bq://p.d-x.t", "bq://p.d.t.u"):
        with pytest.raises(InvalidArgument):
            parse_bq_uri(uri, "uri")


def test_names_and_stamps() -> None:
    assert sanitize_name("Taxi tips (v2)") == "Taxi_tips__v2_"
    ts = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert stamps(ts) == ("2024-01-02T03:04:05.678Z", "2024_01_02T03_04_05_678Z")


def test_to_matrix_flags_nulls_and_non_numbers() -> None:
    table = pa.table(
        {"a": pa.array([1.0, None, 3.0]), "b": pa.array(["1", "x", "2.5"]), "c": pa.array([1, 2, 3])}
    )
    matrix, bad = to_matrix(table)
    assert matrix[2].tolist() == [3.0, 2.5, 3.0]
    assert set(bad) == {1} and "'a' is null" in bad[1]


def test_jsonl_instances_with_key_and_included_fields() -> None:
    opts = InstanceOptions("jsonl", "array", "id", ("b", "a"))
    lines = ['{"id": 1, "a": 1, "b": 2, "z": 0}', '{"a": 1}', "[1, 2]", "{oops"]
    prepared = prepare(pa.table({JSON_COLUMN: lines}), opts)
    assert (
        prepared.values is not None
        and prepared.values[0] == [2, 1]
        and prepared.keys == [1, None, None, None]
    )
    assert set(prepared.bad) == {1, 2, 3}
    assert "keyField" in prepared.bad[1] and "Invalid JSON" in prepared.bad[3]


def test_failing_rows_are_isolated_from_the_batch() -> None:
    class Picky:
        def predict(self, instances: list, parameters: object = None) -> list:
            if any(i[0] < 0 for i in instances):
                raise ValueError("negative input")
            return [i[0] * 2 for i in instances]

    opts = InstanceOptions("bigquery", None, None)
    prepared = prepare(pa.table({"x": [1, -1, 3, 4]}), opts)
    result = predict_chunk(prepared, Picky(), opts, batch_size=3)
    assert result.ok.tolist() == [0, 2, 3] and result.predictions == [2, 6, 8]
    assert "negative input" in result.errors[1]


def test_prediction_columns() -> None:
    assert prediction_array(np.array([1, 0])).type == pa.int64()
    assert prediction_array(np.array([[0.1, 0.9]])).type == pa.list_(pa.float64())
    assert prediction_array([{"a": 1}]).to_pylist() == ['{"a":1}']
    assert prediction_array([1, "x"]).type == pa.string()
