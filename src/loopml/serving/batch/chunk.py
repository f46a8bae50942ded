"""One chunk of a batch prediction job: instances from input rows, predictions, per-row errors.

Columnar inputs (BigQuery tables, CSV files) stay Arrow until the model call: for built-in
frameworks a chunk becomes one float64 matrix and one vectorised `predict`. Rows that cannot be
made into an instance (nulls, non-numbers, a missing key, bad JSON) and rows the model rejects go
to the errors output with their message; the rest of the chunk still gets predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

ERROR_CODE_INVALID = 3  # google.rpc.Code INVALID_ARGUMENT
JSON_COLUMN = "__json_line"


@dataclass(frozen=True)
class InstanceOptions:
    instances_format: str
    instance_type: str | None
    key_field: str | None
    included_fields: tuple[str, ...] = ()
    excluded_fields: tuple[str, ...] = ()

    @property
    def effective_type(self) -> str | None:
        if self.instance_type:
            return self.instance_type
        return None if self.instances_format == "jsonl" else "array"


@dataclass
class Prepared:
    """A chunk's rows, ready for the model."""

    n: int
    source: pa.Table
    keys: list[Any] | None = None
    features: pa.Table | None = None  # columnar inputs: the instance columns, in order
    values: list[Any] | None = None  # jsonl inputs: the instances as sent (None where bad)
    bad: dict[int, str] = field(default_factory=dict)
    raw: list[Any] | None = None  # jsonl: the parsed (or raw text) line, for error output

    def instance(self, i: int, object_rows: bool) -> Any:
        if self.values is not None:
            return self.values[i]
        assert self.features is not None
        if object_rows:
            return {name: self.features.column(name)[i].as_py() for name in self.features.column_names}
        return [col[i].as_py() for col in self.features.columns]

    def instances(self, positions: list[int] | np.ndarray, object_rows: bool) -> list[Any]:
        if self.values is not None:
            return [self.values[i] for i in positions]
        assert self.features is not None
        taken = self.features.take(pa.array(np.asarray(positions, dtype=np.int64)))
        if object_rows:
            return taken.to_pylist()
        columns = [col.to_pylist() for col in taken.columns]
        return [list(row) for row in zip(*columns, strict=True)] if columns else [[] for _ in positions]


@dataclass
class ChunkResult:
    ok: np.ndarray  # positions (within the chunk) that got a prediction
    predictions: Any  # numpy array or list, aligned with `ok`
    errors: dict[int, str]


def _feature_names(names: list[str], opts: InstanceOptions) -> list[str]:
    if opts.included_fields:
        missing = [f for f in opts.included_fields if f not in names]
        if missing:
            raise ValueError(f"includedFields {missing} are not columns of the input ({', '.join(names)}).")
        return [f for f in opts.included_fields if f != opts.key_field]
    return [n for n in names if n not in opts.excluded_fields and n != opts.key_field]


def prepare(source: pa.Table, opts: InstanceOptions) -> Prepared:
    n = source.num_rows
    if opts.instances_format != "jsonl":
        names = source.column_names
        if opts.key_field and opts.key_field not in names:
            raise ValueError(
                f"keyField {opts.key_field!r} is not a column of the input ({', '.join(names)})."
            )
        keys = source.column(opts.key_field).to_pylist() if opts.key_field else None
        return Prepared(n=n, source=source, keys=keys, features=source.select(_feature_names(names, opts)))
    lines = source.column(JSON_COLUMN).to_pylist()
    prepared = Prepared(n=n, source=source, values=[None] * n, raw=[None] * n)
    prepared.keys = [None] * n if opts.key_field else None
    assert prepared.values is not None and prepared.raw is not None
    for i, line in enumerate(lines):
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            prepared.raw[i] = line
            prepared.bad[i] = f"Invalid JSON line: {exc}"
            continue
        prepared.raw[i] = value
        try:
            prepared.values[i] = _transform(value, opts, prepared.keys, i)
        except ValueError as exc:
            prepared.bad[i] = str(exc)
    return prepared


def _transform(value: Any, opts: InstanceOptions, keys: list[Any] | None, i: int) -> Any:
    if isinstance(value, dict):
        obj = dict(value)
        if opts.key_field:
            if opts.key_field not in obj:
                raise ValueError(f"Instance has no keyField {opts.key_field!r}.")
            assert keys is not None
            keys[i] = obj.pop(opts.key_field)
        if opts.included_fields:
            missing = [f for f in opts.included_fields if f not in obj and f != opts.key_field]
            if missing:
                raise ValueError(f"Instance lacks includedFields {missing}.")
            obj = {f: obj[f] for f in opts.included_fields if f != opts.key_field}
        elif opts.excluded_fields:
            obj = {k: v for k, v in obj.items() if k not in opts.excluded_fields}
        return list(obj.values()) if opts.effective_type == "array" else obj
    if opts.key_field or opts.included_fields or opts.excluded_fields:
        raise ValueError("keyField/includedFields/excludedFields need JSON object instances.")
    if opts.effective_type == "object":
        raise ValueError("instanceType 'object' needs JSON object instances.")
    return value


def to_matrix(features: pa.Table) -> tuple[np.ndarray, dict[int, str]]:
    """A float64 matrix of the feature columns and the rows that cannot be numbers (with why)."""
    n = features.num_rows
    matrix = np.empty((n, features.num_columns), dtype=np.float64)
    bad: dict[int, str] = {}
    for j, (name, column) in enumerate(zip(features.column_names, features.columns, strict=True)):
        col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        kind = col.type
        if (
            pa.types.is_integer(kind)
            or pa.types.is_floating(kind)
            or pa.types.is_boolean(kind)
            or (pa.types.is_decimal(kind))
        ):
            values = pc.cast(col, pa.float64()) if not pa.types.is_float64(kind) else col
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            try:
                values = pc.cast(col, pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                parsed = np.full(n, np.nan)
                for i, text in enumerate(col.to_pylist()):
                    if text is None:
                        continue
                    try:
                        parsed[i] = float(text)
                    except ValueError:
                        bad.setdefault(i, f"Invalid instance: field {name!r} value {text!r} is not a number.")
                values = pa.array(parsed, mask=col.is_null().to_numpy(zero_copy_only=False))
        else:
            for i in range(n):
                bad.setdefault(i, f"Invalid instance: field {name!r} has type {kind}, not a number.")
            matrix[:, j] = 0.0
            continue
        if values.null_count:
            for row in np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False)).tolist():
                bad.setdefault(row, f"Invalid instance: field {name!r} is null.")
            values = values.fill_null(0.0)
        matrix[:, j] = values.to_numpy(zero_copy_only=False)
    return matrix, bad


def predict_chunk(
    prepared: Prepared,
    predictor: Any,
    opts: InstanceOptions,
    *,
    batch_size: int,
    parameters: Any = None,
) -> ChunkResult:
    errors = dict(prepared.bad)
    object_rows = opts.effective_type == "object"
    if getattr(predictor, "vectorised", False) and prepared.features is not None:
        try:
            if object_rows:
                good = np.array([i for i in range(prepared.n) if i not in errors], dtype=np.int64)
                frame = prepared.features.take(pa.array(good)).to_pandas()
                return ChunkResult(ok=good, predictions=predictor.predict_frame(frame), errors=errors)
            matrix, bad = to_matrix(prepared.features)
            for i, message in bad.items():
                errors.setdefault(i, message)
            if errors:
                mask = np.ones(prepared.n, dtype=bool)
                mask[list(errors)] = False
                good = np.flatnonzero(mask)
                matrix = matrix[good]
            else:
                good = np.arange(prepared.n)
            preds = predictor.predict_array(matrix) if len(good) else np.empty(0)
            if len(preds) == len(good):
                return ChunkResult(ok=good, predictions=preds, errors=errors)
        except Exception:  # the model rejected the batch: isolate the rows below
            errors = dict(prepared.bad)
    return _predict_lists(prepared, predictor, errors, object_rows, batch_size, parameters)


def _message(exc: Exception) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"Prediction failed: {text}"


def _predict_lists(
    prepared: Prepared,
    predictor: Any,
    errors: dict[int, str],
    object_rows: bool,
    batch_size: int,
    parameters: Any,
) -> ChunkResult:
    positions = [i for i in range(prepared.n) if i not in errors]
    ok: list[int] = []
    preds: list[Any] = []
    for start in range(0, len(positions), max(1, batch_size)):
        batch_pos = positions[start : start + batch_size]
        batch = prepared.instances(batch_pos, object_rows)
        try:
            out = list(predictor.predict(batch, parameters))
            if len(out) != len(batch):
                raise ValueError(f"the model returned {len(out)} predictions for {len(batch)} instances")
            ok.extend(batch_pos)
            preds.extend(out)
            continue
        except Exception:
            pass
        for pos, instance in zip(batch_pos, batch, strict=True):
            try:
                single = list(predictor.predict([instance], parameters))
                if len(single) != 1:
                    raise ValueError(f"the model returned {len(single)} predictions for 1 instance")
                ok.append(pos)
                preds.append(single[0])
            except Exception as exc:
                errors[pos] = _message(exc)
    return ChunkResult(ok=np.asarray(ok, dtype=np.int64), predictions=preds, errors=errors)
