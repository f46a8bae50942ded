"""Training splits of a managed dataset: what a TrainingPipeline asks for, and writing them out.

`parse_split` and `parse_destination` validate a pipeline's `inputDataConfig` when the pipeline
is created (so a mistake is a 400, and nothing runs). `assign` decides which rows go to which
split, deterministically: the same dataset and the same split always give the same rows.
`write_csv_splits` and `write_table_splits` materialise the splits when the job starts, as
Vertex does:

- `gcsDestination.outputUriPrefix` → `<prefix>/dataset-<id>-tables-<YYYY-MM-DDThh:mm:ss.sssZ>/`
  `training-00000-of-00001.csv`, … and `AIP_DATA_FORMAT=csv`, `AIP_TRAINING_DATA_URI=<dir>/training-*`;
- `bigqueryDestination.outputUri` (`bq://project`) → warehouse dataset
  `dataset_<id>_tables_<YYYY_MM_DDThh_mm_ss_sssZ>` with tables `training`, `validation`, `test`,
  and `AIP_DATA_FORMAT=bigquery`, `AIP_TRAINING_DATA_URI=bq://project.dataset_….training`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from loopml.artifacts import ArtifactStore
from loopml.errors import InvalidArgument
from loopml.warehouse.base import check_name

log = logging.getLogger(__name__)

SPLITS = ("training", "validation", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
SHARD_ROWS = 100_000
_EPS = 1e-9


def _get(config: dict[str, Any], camel: str) -> Any:
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
    return config.get(camel, config.get(snake))


def _fractions(raw: dict[str, Any], where: str) -> list[float]:
    """[training, validation, test]; unset (or 0) ones share nothing; the rest goes to training."""
    values = []
    for split in SPLITS:
        value = _get(raw, f"{split}Fraction")
        if value is None:
            value = 0.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgument(f"{where}.{split}Fraction must be a number, got {value!r}.")
        if not 0.0 <= float(value) <= 1.0:
            raise InvalidArgument(f"{where}.{split}Fraction must be between 0 and 1, got {value!r}.")
        values.append(float(value))
    total = sum(values)
    if total == 0.0:
        return list(DEFAULT_FRACTIONS)
    if total > 1.0 + 1e-6:
        raise InvalidArgument(
            f"{where}: trainingFraction + validationFraction + testFraction = {total:g}, which is over 1."
        )
    values[0] += max(0.0, 1.0 - total)  # an unassigned remainder trains
    return values


def _key(raw: Any, where: str) -> str:
    key = _get(raw, "key") if isinstance(raw, dict) else None
    if not isinstance(key, str) or not key.strip():
        raise InvalidArgument(f"{where}.key must name a column of the dataset.")
    return key.strip()


def parse_split(config: dict[str, Any]) -> dict[str, Any]:
    """The split of an inputDataConfig: {"kind": "fraction"|"predefined"|"timestamp", ...}."""
    given = {
        name: _get(config, name)
        for name in ("fractionSplit", "filterSplit", "predefinedSplit", "timestampSplit", "stratifiedSplit")
        if _get(config, name) is not None
    }
    if len(given) > 1:
        raise InvalidArgument(f"inputDataConfig has {' and '.join(sorted(given))}; give only one split.")
    if "filterSplit" in given:
        raise InvalidArgument(
            "inputDataConfig.filterSplit filters DataItems of unstructured datasets; a tabular dataset "
            "is split with fractionSplit, predefinedSplit or timestampSplit."
        )
    if "stratifiedSplit" in given:
        raise InvalidArgument(
            "inputDataConfig.stratifiedSplit is not supported by loopml; use fractionSplit, "
            "predefinedSplit or timestampSplit."
        )
    if "predefinedSplit" in given:
        return {
            "kind": "predefined",
            "key": _key(given["predefinedSplit"], "inputDataConfig.predefinedSplit"),
        }
    if "timestampSplit" in given:
        raw = given["timestampSplit"]
        if not isinstance(raw, dict):
            raise InvalidArgument("inputDataConfig.timestampSplit must be an object.")
        return {
            "kind": "timestamp",
            "key": _key(raw, "inputDataConfig.timestampSplit"),
            "fractions": _fractions(raw, "inputDataConfig.timestampSplit"),
        }
    raw = given.get("fractionSplit") or {}
    if not isinstance(raw, dict):
        raise InvalidArgument("inputDataConfig.fractionSplit must be an object.")
    return {"kind": "fraction", "fractions": _fractions(raw, "inputDataConfig.fractionSplit")}


def parse_destination(config: dict[str, Any], store: ArtifactStore) -> dict[str, Any]:
    """Where the splits go: {"kind": "bigquery", "project"} or {"kind": "gcs", "prefix"}."""
    bq = _get(config, "bigqueryDestination")
    gcs = _get(config, "gcsDestination")
    if isinstance(bq, dict) and _get(bq, "outputUri"):
        uri = _get(bq, "outputUri")
        project = uri[len("bq://") :] if isinstance(uri, str) and uri.startswith("bq://") else ""
        if not project or "." in project or "/" in project:
            raise InvalidArgument(
                f"inputDataConfig.bigqueryDestination.outputUri must be a project, 'bq://PROJECT', got {uri!r}."
            )
        check_name("project", project)
        return {"kind": "bigquery", "project": project}
    if bq not in (None, {}) and not isinstance(bq, dict):
        raise InvalidArgument("inputDataConfig.bigqueryDestination must be an object {outputUri}.")
    prefix = _get(gcs, "outputUriPrefix") if isinstance(gcs, dict) else None
    if not prefix:
        raise InvalidArgument(
            "inputDataConfig with a datasetId needs gcsDestination.outputUriPrefix (CSV files; the SDK "
            "sends base_output_dir) or bigqueryDestination.outputUri (warehouse tables)."
        )
    if not isinstance(prefix, str) or not prefix.startswith("gs://"):
        raise InvalidArgument(
            f"inputDataConfig.gcsDestination.outputUriPrefix must be a gs:// URI, got {prefix!r}."
        )
    store.resolve(prefix)  # inside a bucket, no escapes
    bucket = prefix[5:].split("/", 1)[0]
    remote = store.remote
    if not store.bucket_path(bucket).is_dir() and not (remote is not None and remote.bucket_exists(bucket)):
        raise InvalidArgument(
            f"inputDataConfig.gcsDestination.outputUriPrefix {prefix!r}: bucket {bucket!r} does not exist."
        )
    return {"kind": "gcs", "prefix": prefix.rstrip("/")}


def seed_of(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _cut(order: np.ndarray, fractions: list[float]) -> dict[str, np.ndarray]:
    n = len(order)
    n_val = min(n, round(n * fractions[1]))
    n_test = min(n - n_val, round(n * fractions[2]))
    n_train = n - n_val - n_test
    return {
        "training": order[:n_train],
        "validation": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }


def _column(table: pa.Table, key: str) -> pa.ChunkedArray:
    names = {name.lower(): name for name in table.column_names}
    if key.lower() not in names:
        raise InvalidArgument(
            f"The split key {key!r} is not a column of the dataset ({', '.join(table.column_names)})."
        )
    return table.column(names[key.lower()])


def assign(table: pa.Table, split: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Row indices (ascending) of each split. Deterministic for a given table, split and seed."""
    n = table.num_rows
    if split["kind"] == "predefined":
        values = pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(_column(table, split["key"]), pa.string())))
        found = values.to_numpy(zero_copy_only=False)
        return {name: np.flatnonzero(found == name) for name in SPLITS}
    if split["kind"] == "timestamp":
        import pandas as pd

        raw = _column(table, split["key"]).to_pandas()
        times = pd.to_datetime(raw, utc=True, errors="coerce", format="ISO8601")
        valid = np.flatnonzero(~times.isna().to_numpy())
        order = valid[np.argsort(times.iloc[valid].to_numpy(), kind="stable")]
        cut = _cut(order, split["fractions"])
    else:
        order = np.random.default_rng(seed).permutation(n)
        cut = _cut(order, split["fractions"])
    return {name: np.sort(idx) for name, idx in cut.items()}


def stamps(when: datetime) -> tuple[str, str]:
    """The directory and the warehouse dataset stamps Vertex uses for one training call."""
    when = when.astimezone(UTC)
    iso = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    return iso, iso.replace("-", "_").replace(":", "_").replace(".", "_")


def _csv_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=True, quoting_style="needed"))
    return buf.getvalue()


def write_csv_splits(
    store: ArtifactStore, directory: str, table: pa.Table, parts: dict[str, np.ndarray]
) -> dict[str, str]:
    """CSV shards under `directory` (written aside, then renamed into place); glob URI per split.

    An empty split still gets one shard with just the header, so its glob matches a file that
    names the columns.
    """
    final = store.resolve(directory)
    if final.exists():
        raise InvalidArgument(f"The split directory {directory} already exists.")
    staging = final.with_name(f".{final.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        uris = {}
        for name in SPLITS:
            rows = table.take(pa.array(parts[name], type=pa.int64()))
            count = max(1, -(-rows.num_rows // SHARD_ROWS))
            for i in range(count):
                shard = rows.slice(i * SHARD_ROWS, SHARD_ROWS)
                (staging / f"{name}-{i:05d}-of-{count:05d}.csv").write_bytes(_csv_bytes(shard))
            uris[name] = f"{directory}/{name}-*"
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        store.publish(directory)  # to the object store, when there is one (undone if it fails)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)  # no half-written split left in the cache either
        raise
    return uris


def write_table_splits(
    warehouse: Any, project: str, dataset: str, table: pa.Table, parts: dict[str, np.ndarray]
) -> dict[str, str]:
    """Tables `training`, `validation`, `test` in a new warehouse dataset; bq:// URI per split."""
    warehouse.create_dataset(project, dataset, description="Training splits of a Vertex managed dataset.")
    try:
        for name in SPLITS:
            rows = table.take(pa.array(parts[name], type=pa.int64()))
            warehouse.write_table_arrow(project, dataset, name, rows, mode="create")
    except BaseException:
        _drop_dataset(warehouse, project, dataset)
        raise
    return {name: f"bq://{project}.{dataset}.{name}" for name in SPLITS}


def _drop_dataset(warehouse: Any, project: str, dataset: str) -> None:
    """Undo a half-written split (the error that caused it is what the job reports)."""
    try:
        warehouse.delete_dataset(project, dataset, delete_contents=True)
    except Exception as exc:
        log.warning("could not remove the half-written split dataset %s.%s: %s", project, dataset, exc)
