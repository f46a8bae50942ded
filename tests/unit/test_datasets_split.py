"""Split rules of managed datasets: parsing inputDataConfig, and which rows go to which split."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from loopml.artifacts import ArtifactStore
from loopml.datasets.sources import parse_source
from loopml.datasets.split import (
    assign,
    parse_destination,
    parse_split,
    seed_of,
    stamps,
    write_csv_splits,
)
from loopml.errors import InvalidArgument


def test_fraction_split_defaults_and_remainder() -> None:
    assert parse_split({}) == {"kind": "fraction", "fractions": [0.8, 0.1, 0.1]}
    got = parse_split(
        {"fractionSplit": {"trainingFraction": 0.7, "validationFraction": 0.2, "testFraction": 0.1}}
    )
    assert got["fractions"] == pytest.approx([0.7, 0.2, 0.1])
    # the remainder of fractions that sum to less than 1 trains; snake_case keys are accepted
    got = parse_split({"fraction_split": {"validation_fraction": 0.25}})
    assert got["fractions"] == pytest.approx([0.75, 0.25, 0.0])


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"fractionSplit": {"trainingFraction": 0.9, "validationFraction": 0.2}}, "over 1"),
        ({"fractionSplit": {"trainingFraction": -0.1}}, "between 0 and 1"),
        ({"fractionSplit": {"trainingFraction": "half"}}, "must be a number"),
        ({"filterSplit": {"trainingFilter": "x"}}, "unstructured"),
        ({"stratifiedSplit": {"key": "q"}}, "not supported"),
        ({"predefinedSplit": {}}, "predefinedSplit.key"),
        ({"predefinedSplit": {"key": "s"}, "fractionSplit": {"trainingFraction": 1}}, "give only one"),
    ],
)
def test_bad_splits_are_invalid_arguments(config: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        parse_split(config)


def test_destination_rules(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    (store.buckets_dir / "bkt").mkdir()
    assert parse_destination({"gcsDestination": {"outputUriPrefix": "gs://bkt/run/"}}, store) == {
        "kind": "gcs",
        "prefix": "gs://bkt/run",
    }
    both = {
        "gcsDestination": {"outputUriPrefix": "gs://bkt/run"},
        "bigqueryDestination": {"outputUri": "bq://p1"},
    }
    assert parse_destination(both, store) == {"kind": "bigquery", "project": "p1"}
    for bad, needle in [
        ({}, "needs gcsDestination"),
        ({"gcsDestination": {"outputUriPrefix": "/tmp/x"}}, "gs:// URI"),
        ({"gcsDestination": {"outputUriPrefix": "gs://nobucket/x"}}, "does not exist"),
        ({"gcsDestination": {"outputUriPrefix": "gs://bkt/../../etc"}}, "escapes"),
        ({"bigqueryDestination": {"outputUri": "bq://p1.ds"}}, "must be a project"),
    ]:
        with pytest.raises(InvalidArgument, match=needle):
            parse_destination(bad, store)


def test_source_shapes() -> None:
    src = parse_source({"inputConfig": {"gcsSource": {"uri": ["gs://b/a.csv"]}}})
    assert (src.kind, src.uris) == ("gcs", ("gs://b/a.csv",))
    src = parse_source({"inputConfig": {"bigquerySource": {"uri": "bq://p.d.t"}}})
    assert (src.kind, src.table) == ("bigquery", ("p", "d", "t"))
    for bad, needle in [
        (None, "must be an object"),
        ({}, "inputConfig is required"),
        ({"inputConfig": {}}, "exactly one"),
        ({"inputConfig": {"gcsSource": {"uri": ["/etc/passwd"]}}}, "not a gs:// URI"),
        ({"inputConfig": {"bigquerySource": {"uri": "bq://p.t"}}}, "project.dataset.table"),
    ]:
        with pytest.raises(InvalidArgument, match=needle):
            parse_source(bad)


def test_fraction_assignment_is_a_deterministic_partition() -> None:
    table = pa.table({"x": list(range(1000))})
    split = parse_split(
        {"fractionSplit": {"trainingFraction": 0.7, "validationFraction": 0.2, "testFraction": 0.1}}
    )
    parts = assign(table, split, seed_of("projects/p/locations/l/datasets/1"))
    assert [len(parts[k]) for k in ("training", "validation", "test")] == [700, 200, 100]
    joined = np.concatenate(list(parts.values()))
    assert sorted(joined.tolist()) == list(range(1000))  # disjoint and complete
    again = assign(table, split, seed_of("projects/p/locations/l/datasets/1"))
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = assign(table, split, seed_of("projects/p/locations/l/datasets/2"))
    assert not np.array_equal(parts["test"], other["test"])  # another dataset, another shuffle
    assert parts["training"].tolist() != list(range(700))  # shuffled, not the first rows


def test_predefined_and_timestamp_assignment() -> None:
    table = pa.table(
        {
            "ml_use": ["training", "TEST", "validation", "other", None, " training "],
            "t": [
                "2024-01-05T00:00:00Z",
                "2024-01-01T00:00:00Z",
                "not a time",
                "2024-01-03T00:00:00Z",
                "2024-01-02T00:00:00Z",
                "2024-01-04T00:00:00Z",
            ],
        }
    )
    parts = assign(table, parse_split({"predefinedSplit": {"key": "ML_USE"}}), 1)
    assert {k: v.tolist() for k, v in parts.items()} == {"training": [0, 5], "validation": [2], "test": [1]}
    split = parse_split(
        {
            "timestampSplit": {
                "key": "t",
                "trainingFraction": 0.6,
                "validationFraction": 0.2,
                "testFraction": 0.2,
            }
        }
    )
    parts = assign(table, split, 1)
    # 5 valid times, oldest first: rows 1, 4, 3, 5, 0 -> 3 training, 1 validation, 1 test
    assert {k: v.tolist() for k, v in parts.items()} == {
        "training": [1, 3, 4],
        "validation": [5],
        "test": [0],
    }
    with pytest.raises(InvalidArgument, match="not a column"):
        assign(table, {"kind": "predefined", "key": "nope"}, 1)


def test_stamps_match_vertex_names() -> None:
    when = datetime(2024, 3, 9, 7, 5, 1, 123456, tzinfo=UTC)
    assert stamps(when) == ("2024-03-09T07:05:01.123Z", "2024_03_09T07_05_01_123Z")


def test_csv_shards_hold_every_row_once_with_a_header(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    (store.buckets_dir / "bkt").mkdir()
    table = pa.table({"a": [1, 2, 3, 4], "b": ["x", "y,z", "w", "v"]})
    parts = {"training": np.array([0, 2]), "validation": np.array([3]), "test": np.array([], dtype=np.int64)}
    uris = write_csv_splits(store, "gs://bkt/out/dataset-1-tables-T", table, parts)
    assert uris["training"] == "gs://bkt/out/dataset-1-tables-T/training-*"
    folder = store.buckets_dir / "bkt" / "out" / "dataset-1-tables-T"
    assert sorted(p.name for p in folder.iterdir()) == [
        "test-00000-of-00001.csv",
        "training-00000-of-00001.csv",
        "validation-00000-of-00001.csv",
    ]
    assert (folder / "training-00000-of-00001.csv").read_text().splitlines() == ['"a","b"', '1,"x"', '3,"w"']
    assert (folder / "test-00000-of-00001.csv").read_text().splitlines() == ['"a","b"']
    assert not [p for p in folder.parent.iterdir() if "partial" in p.name]
    with pytest.raises(InvalidArgument, match="already exists"):
        write_csv_splits(store, "gs://bkt/out/dataset-1-tables-T", table, parts)
