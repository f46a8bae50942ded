"""DatasetService against real SQLite and a real (embedded) PostgreSQL, a real store and warehouse."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy

from loopml.artifacts import ArtifactStore
from loopml.datasets import TABULAR_SCHEMA, DatasetService
from loopml.errors import InvalidArgument, NotFound
from loopml.metadata import Database
from loopml.registry.operations import OperationStore
from loopml.warehouse import Warehouse

P, L = "proj1", "us-central1"


@dataclass
class Stack:
    db: Database
    store: ArtifactStore
    warehouse: Warehouse
    datasets: DatasetService

    def csv(self, name: str, rows: int, header: bool = True) -> str:
        lines = ["a,b,ml_use"] if header else []
        lines += [f"{i},{i * 0.5},{('training', 'validation', 'test')[i % 3]}" for i in range(rows)]
        path = self.store.buckets_dir / "bkt" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        return f"gs://bkt/{name}"

    def create(self, source: dict[str, Any], **extra: Any) -> dict[str, Any]:
        body = {"displayName": "ds", "metadataSchemaUri": TABULAR_SCHEMA, "metadata": {"inputConfig": source}}
        body.update(extra)
        op = self.datasets.create(P, L, body)
        assert op["done"] is True
        return dict(op["response"])


@pytest.fixture(params=["sqlite", "postgres"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'metadata.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    db = Database(url)
    db.migrate()
    store = ArtifactStore(tmp_path / "store")
    (store.buckets_dir / "bkt").mkdir()
    warehouse = Warehouse(tmp_path / "wh.duckdb", store)
    yield Stack(db, store, warehouse, DatasetService(db, store, lambda: warehouse))
    warehouse.close()
    db.dispose()


def test_migration_creates_the_table_and_is_idempotent(stack: Stack) -> None:
    stack.db.migrate()  # again: nothing to do
    columns = {c["name"] for c in sqlalchemy.inspect(stack.db.engine).get_columns("vertex_datasets")}
    assert {"dataset_id", "display_name", "metadata_schema_uri", "metadata_json", "labels"} <= columns


def test_create_get_list_patch_delete(stack: Stack) -> None:
    uri = stack.csv("d/a.csv", 10)
    created = stack.create({"gcsSource": {"uri": [uri]}}, labels={"team": "ml"})
    name = created["name"]
    assert created["@type"].endswith("aiplatform.v1.Dataset")
    assert name.startswith(f"projects/{P}/locations/{L}/datasets/") and name.rsplit("/", 1)[1].isdigit()
    got = stack.datasets.get(P, L, name.rsplit("/", 1)[1])
    assert got["metadata"] == {"inputConfig": {"gcsSource": {"uri": [uri]}}}
    assert got["metadataSchemaUri"] == TABULAR_SCHEMA and got["labels"] == {"team": "ml"}
    assert stack.datasets.get(P, L, name) == got  # the full resource name works too
    second = stack.create({"gcsSource": {"uri": [uri]}}, displayName="other")
    listed = stack.datasets.list(P, L)["datasets"]
    assert [d["name"] for d in listed] == [second["name"], name]  # newest first
    only = stack.datasets.list(P, L, filter='labels.team="ml"')["datasets"]
    assert [d["name"] for d in only] == [name]
    page = stack.datasets.list(P, L, page_size=1, order_by="display_name")
    assert [d["displayName"] for d in page["datasets"]] == ["ds"]
    rest = stack.datasets.list(P, L, page_size=1, order_by="display_name", page_token=page["nextPageToken"])
    assert [d["displayName"] for d in rest["datasets"]] == ["other"] and "nextPageToken" not in rest
    patched = stack.datasets.patch(
        P, L, name, {"displayName": "renamed", "labels": {"v": "2"}}, "display_name,labels"
    )
    assert (patched["displayName"], patched["labels"]) == ("renamed", {"v": "2"})
    assert patched["etag"] != got["etag"]
    with pytest.raises(InvalidArgument, match="cannot be updated"):
        stack.datasets.patch(P, L, name, {"metadata": {}}, "metadata")
    op = stack.datasets.delete(P, L, name)
    assert op["done"] and op["response"] == {"@type": "type.googleapis.com/google.protobuf.Empty"}
    assert OperationStore(stack.db).get(op["name"])["done"] is True
    with pytest.raises(NotFound):
        stack.datasets.get(P, L, name)
    with pytest.raises(NotFound):
        stack.datasets.delete(P, L, name)


def test_bad_sources_are_400s_naming_the_source_and_store_nothing(stack: Stack) -> None:
    cases = [
        ({"gcsSource": {"uri": ["gs://bkt/missing.csv"]}}, "gs://bkt/missing.csv"),
        ({"gcsSource": {"uri": ["gs://bkt/none-*.csv"]}}, "matches no object"),
        ({"gcsSource": {"uri": ["gs://bkt/../x.csv"]}}, "escapes"),
        ({"bigquerySource": {"uri": f"bq://{P}.nods.t"}}, f"bq://{P}.nods.t"),
    ]
    for source, needle in cases:
        with pytest.raises(InvalidArgument, match=needle):
            stack.create(source)
    with pytest.raises(InvalidArgument, match="tabular datasets only"):
        stack.create(
            {"gcsSource": {"uri": [stack.csv("x.csv", 3)]}}, metadataSchemaUri="gs://x/image_1.0.0.yaml"
        )
    assert stack.datasets.list(P, L) == {"datasets": []}


def test_plan_validates_dataset_split_destination_and_key(stack: Stack) -> None:
    name = stack.create({"gcsSource": {"uri": [stack.csv("p.csv", 30)]}})["name"]
    ident = name.rsplit("/", 1)[1]
    gcs = {"gcsDestination": {"outputUriPrefix": "gs://bkt/run"}}
    plan = stack.datasets.plan(P, L, {"datasetId": ident, **gcs})
    assert plan["split"] == {"kind": "fraction", "fractions": [0.8, 0.1, 0.1]}
    with pytest.raises(NotFound, match="datasets/4242 does not exist"):
        stack.datasets.plan(P, L, {"datasetId": "4242", **gcs})
    with pytest.raises(InvalidArgument, match="over 1"):
        stack.datasets.plan(
            P, L, {"datasetId": ident, "fractionSplit": {"trainingFraction": 0.9, "testFraction": 0.2}, **gcs}
        )
    with pytest.raises(InvalidArgument, match="'nope' is not a column"):
        stack.datasets.plan(P, L, {"datasetId": ident, "predefinedSplit": {"key": "nope"}, **gcs})
    (stack.store.buckets_dir / "bkt" / "p.csv").unlink()  # the source went away after creation
    with pytest.raises(InvalidArgument, match=r"gs://bkt/p\.csv"):
        stack.datasets.plan(P, L, {"datasetId": ident, **gcs})
    # ... or between the pipeline's creation and its job's start: nothing is written
    with pytest.raises(InvalidArgument, match=r"gs://bkt/p\.csv"):
        stack.datasets.materialise(plan, datetime(2024, 1, 1, tzinfo=UTC))
    assert not (stack.store.buckets_dir / "bkt" / "run").exists()


def test_materialise_csv_from_several_files(stack: Stack) -> None:
    # the header of the first file; the second repeats it, the third has none
    uris = [
        stack.csv("m/part-1.csv", 40),
        stack.csv("m/part-2.csv", 30),
        stack.csv("m/part-3.csv", 30, header=False),
    ]
    name = stack.create({"gcsSource": {"uri": ["gs://bkt/m/part-*.csv"]}})["name"]
    assert len(uris) == 3
    plan = stack.datasets.plan(
        P,
        L,
        {
            "datasetId": name,
            "predefinedSplit": {"key": "ml_use"},
            "gcsDestination": {"outputUriPrefix": "gs://bkt/out"},
        },
    )
    result = stack.datasets.materialise(plan, datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=UTC))
    ident = name.rsplit("/", 1)[1]
    folder = f"gs://bkt/out/dataset-{ident}-tables-2024-01-02T03:04:05.006Z"
    assert result["env"] == {
        "AIP_DATA_FORMAT": "csv",
        "AIP_TRAINING_DATA_URI": f"{folder}/training-*",
        "AIP_VALIDATION_DATA_URI": f"{folder}/validation-*",
        "AIP_TEST_DATA_URI": f"{folder}/test-*",
    }
    assert result["sourceRows"] == 100
    assert result["counts"] == {"training": 34, "validation": 33, "test": 33}
    text = stack.store.read_bytes(f"{folder}/validation-00000-of-00001.csv").decode().splitlines()
    assert text[0] == '"a","b","ml_use"' and len(text) == 34
    assert all(line.endswith('"validation"') for line in text[1:])


def test_materialise_warehouse_tables_from_a_table(stack: Stack) -> None:
    stack.warehouse.create_dataset(P, "src")
    stack.warehouse.write_table_arrow(
        P, "src", "wine", pa.table({"x": list(range(50)), "y": [i % 7 for i in range(50)]}), mode="create"
    )
    name = stack.create({"bigquerySource": {"uri": f"bq://{P}.src.wine"}})["name"]
    ident = name.rsplit("/", 1)[1]
    config = {
        "datasetId": ident,
        "fractionSplit": {"trainingFraction": 0.6, "validationFraction": 0.2, "testFraction": 0.2},
        "bigqueryDestination": {"outputUri": "bq://outproj"},
    }
    plan = stack.datasets.plan(P, L, config)
    result = stack.datasets.materialise(plan, datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
    table_ds = f"dataset_{ident}_tables_2024_01_02T03_04_05_000Z"
    assert result["env"]["AIP_DATA_FORMAT"] == "bigquery"
    assert result["env"]["AIP_TEST_DATA_URI"] == f"bq://outproj.{table_ds}.test"
    seen: list[int] = []
    for split, size in (("training", 30), ("validation", 10), ("test", 10)):
        rows = stack.warehouse.read_table_arrow("outproj", table_ds, split)
        assert rows.num_rows == size and rows.column_names == ["x", "y"]
        seen += rows.column("x").to_pylist()
    assert sorted(seen) == list(range(50))
    # the same plan later: the same rows in each split (deterministic), in a new dataset
    again = stack.datasets.materialise(plan, datetime(2024, 1, 2, 3, 4, 6, tzinfo=UTC))
    later = again["uris"]["test"].removeprefix("bq://outproj.").split(".")[0]
    assert later != table_ds
    first = stack.warehouse.read_table_arrow("outproj", table_ds, "test").column("x").to_pylist()
    assert stack.warehouse.read_table_arrow("outproj", later, "test").column("x").to_pylist() == first
