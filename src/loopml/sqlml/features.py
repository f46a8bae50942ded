"""Automatic feature preprocessing, as BigQuery ML does it, stored as plain JSON.

- Numeric columns (INT64, FLOAT64, NUMERIC, BIGNUMERIC) are standardised with the training mean
  and standard deviation (population); a column with zero variance is centred but not scaled, so
  nothing is ever divided by zero. NULLs (and NaN) are replaced by the training mean.
- TIMESTAMP columns become seconds since the epoch and are then treated as numeric.
- BOOL, STRING, BYTES, DATE, TIME and DATETIME columns are one-hot encoded over the categories
  seen in training (NULL is a category of its own); an unseen category encodes as all zeros.
- ARRAY and STRUCT columns are refused with a 400 naming the column.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loopml.errors import InvalidArgument, InvalidQuery
from loopml.sqlml.skew import category_key, finite_histogram, numeric_histogram

_T = TypeVar("_T")

NUMERIC = "numeric"
CATEGORICAL = "categorical"
TIMESTAMP = "timestamp"


def bq_type(t: pa.DataType) -> str:
    """The BigQuery type name of an arrow type (for messages and metadata)."""
    if pa.types.is_boolean(t):
        return "BOOL"
    if pa.types.is_integer(t):
        return "INT64"
    if pa.types.is_floating(t):
        return "FLOAT64"
    if pa.types.is_decimal(t):
        return "NUMERIC"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "STRING"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "BYTES"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP" if t.tz else "DATETIME"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_time(t):
        return "TIME"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return "ARRAY"
    if pa.types.is_struct(t):
        return "STRUCT"
    if pa.types.is_null(t):
        return "NULL"
    return str(t).upper()


def kind_of(t: pa.DataType, column: str) -> str:
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return NUMERIC
    if pa.types.is_timestamp(t) and t.tz:
        return TIMESTAMP
    if (
        pa.types.is_boolean(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_date(t)
        or pa.types.is_time(t)
        or pa.types.is_timestamp(t)
    ):
        return CATEGORICAL
    if pa.types.is_null(t):
        raise InvalidQuery(f"Column {column} has only NULL values; it cannot be used as a feature.")
    raise InvalidQuery(
        f"Column {column} has type {bq_type(t)}, which loopml cannot use as a feature: "
        "select numeric, BOOL, STRING, DATE or TIMESTAMP columns (flatten ARRAY/STRUCT values)."
    )


@dataclass
class Feature:
    name: str
    kind: str
    type: str  # BigQuery type name at training
    mean: float = 0.0
    scale: float = 1.0
    categories: list[str | None] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return len(self.categories) if self.kind == CATEGORICAL else 1


def _numeric(col: pa.ChunkedArray | pa.Array, kind: str) -> np.ndarray:
    if kind == TIMESTAMP:
        col = pc.divide(pc.cast(pc.cast(col, pa.timestamp("us", tz="UTC")), pa.int64()), 1_000_000.0)
    arr = pc.fill_null(pc.cast(col, pa.float64()), float("nan"))
    if isinstance(arr, pa.ChunkedArray):
        return np.asarray(arr.to_numpy(), dtype=np.float64)
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)


def _strings(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_boolean(col.type):
        return pc.if_else(col, "true", "false")
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        return pa.array([None if v is None else v.hex() for v in col.to_pylist()], pa.string())
    return pc.cast(col, pa.string())


def category_counts(values: pa.Array) -> dict[str, float]:
    """Count of every category (NULL keyed "NULL"), as stored for skew detection."""
    out: dict[str, float] = {}
    for item in pc.value_counts(values).to_pylist():
        out[category_key(item["values"])] = out.get(category_key(item["values"]), 0.0) + float(item["counts"])
    return out


def column_statistics(feat: Feature, col: Any) -> Any:
    """Serving-side statistics of one column, comparable with the feature's training statistics."""
    if feat.kind == CATEGORICAL:
        return category_counts(_strings(col))
    return numeric_histogram(_numeric(col, feat.kind if feat.kind == TIMESTAMP else NUMERIC))


_BLOCK = 65_536  # rows per block when assembling the matrix
_PARALLEL_MIN = 100_000  # rows from which columns / blocks are processed on threads


def _map(fn: Callable[[Any], _T], items: Sequence[Any], rows: int) -> list[_T]:
    """fn over items, in order; on a few threads for large tables (numpy and arrow release the GIL)."""
    workers = min(4, os.cpu_count() or 1, len(items))
    if rows < _PARALLEL_MIN or workers < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _fit_column(col: Any, name: str, standardize: bool) -> tuple[Feature, np.ndarray | None]:
    """A fitted feature and, for numeric ones, the column as float64 (NULL as NaN)."""
    kind = kind_of(col.type, name)
    feat = Feature(name=name, kind=kind, type=bq_type(col.type))
    if kind == CATEGORICAL:
        values = _strings(col)
        counts = category_counts(values)
        uniq = pc.unique(values).to_pylist()
        feat.categories = sorted(uniq, key=lambda v: (v is None, v or ""))
        feat.stats = {
            "category_count": len(feat.categories),
            "null_count": col.null_count,
            "counts": counts,
        }
        return feat, None
    x = _numeric(col, kind)
    nulls = 0
    valid = x
    if not np.isfinite(x).all():
        if np.isinf(x).any():
            raise InvalidQuery(
                f"Column {name} contains infinite values; remove them from the training query."
            )
        finite = np.isfinite(x)
        nulls = int(np.count_nonzero(~finite))
        valid = x[finite]
    if valid.size == 0:
        raise InvalidQuery(f"Column {name} has only NULL values; it cannot be used as a feature.")
    mean = float(valid.mean())
    std = float(valid.std())
    lo, hi = float(valid.min()), float(valid.max())
    feat.mean = mean
    feat.scale = std if (standardize and std > 1e-12 * max(1.0, abs(mean))) else 1.0
    feat.stats = {
        "min": lo,
        "max": hi,
        "mean": mean,
        "median": float(np.median(valid[:: -(-valid.size // 200_000)])),  # approximate
        "stddev": std,
        "null_count": nulls,
        "histogram": finite_histogram(valid, lo, hi, nulls),
    }
    return feat, x


class FeatureEncoder:
    """Turns columns into the model's numeric matrix; fitted once, stored as JSON."""

    def __init__(self, features: list[Feature], standardize: bool) -> None:
        self.features = features
        self.standardize = standardize

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def width(self) -> int:
        return sum(f.width for f in self.features)

    # -- fitting ---------------------------------------------------------------------------
    @classmethod
    def fit(cls, table: pa.Table, columns: list[str], *, standardize: bool) -> FeatureEncoder:
        return cls.fit_transform(table, columns, standardize=standardize, encode=False)[0]

    @classmethod
    def fit_transform(
        cls, table: pa.Table, columns: list[str], *, standardize: bool, encode: bool = True
    ) -> tuple[FeatureEncoder, np.ndarray]:
        """Fit on the training table and (encode=True) encode it, reading each column once.

        Columns are fitted in parallel (numpy and arrow release the GIL); the result does not
        depend on the number of threads.
        """
        if not columns:
            raise InvalidQuery("The training query selects no feature columns.")
        fitted = _map(
            lambda name: _fit_column(table.column(name), name, standardize), columns, table.num_rows
        )
        encoder = cls([f for f, _ in fitted], standardize)
        if not encode:
            return encoder, np.empty((0, 0))
        sources = _map(
            lambda i: encoder._source(encoder.features[i], table.column(columns[i]), fitted[i][1]),
            range(len(columns)),
            table.num_rows,
        )
        return encoder, encoder._assemble(sources, table.num_rows)

    # -- encoding --------------------------------------------------------------------------
    def transform(self, table: pa.Table) -> np.ndarray:
        """The encoded (C-ordered) matrix for an arrow table holding (at least) the training columns."""
        present = {name.lower(): name for name in table.column_names}
        cols = []
        for feat in self.features:
            actual = present.get(feat.name.lower())
            if actual is None:
                raise InvalidQuery(
                    f"The input data has no column {feat.name}; the model was trained on "
                    f"{', '.join(self.names)}."
                )
            col = table.column(actual)
            if not pa.types.is_null(col.type):
                kind = kind_of(col.type, feat.name)
                compatible = kind == feat.kind or (feat.kind == NUMERIC and kind == TIMESTAMP)
                if not compatible:
                    raise InvalidQuery(
                        f"Column {feat.name} has type {bq_type(col.type)} but the model was trained with "
                        f"{feat.type}."
                    )
            cols.append((feat, col))
        sources = _map(lambda fc: self._source(fc[0], fc[1], None), cols, table.num_rows)
        return self._assemble(sources, table.num_rows)

    def _source(self, feat: Feature, col: Any, raw: np.ndarray | None) -> np.ndarray:
        """Per feature: category indexes (-1: unseen), or numeric values with NaN/NULL as the mean."""
        if feat.kind == CATEGORICAL:
            values = _strings(col) if not pa.types.is_null(col.type) else pa.nulls(len(col), pa.string())
            index = pc.index_in(values, value_set=pa.array(feat.categories, pa.string()), skip_nulls=False)
            return np.asarray(pc.fill_null(index, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
        if raw is not None:
            x = raw
        elif pa.types.is_null(col.type):
            x = np.full(len(col), np.nan)
        else:
            x = _numeric(col, feat.kind if feat.kind == TIMESTAMP else NUMERIC)
        if not np.isfinite(x).all():
            if np.isinf(x).any():
                raise InvalidArgument(f"Column {feat.name} contains infinite values.")
            x = np.where(np.isnan(x), feat.mean, x)
        return x

    def _assemble(self, sources: list[np.ndarray], n: int) -> np.ndarray:
        out = np.empty((n, self.width), dtype=np.float64)
        offsets = [sl.start for _, sl in self.dimension_slices()]

        def block(bounds: tuple[int, int]) -> None:
            a, b = bounds
            for feat, j, src in zip(self.features, offsets, sources, strict=True):
                if feat.kind == CATEGORICAL:
                    out[a:b, j : j + feat.width] = 0.0
                    idx = src[a:b]
                    rows = np.nonzero(idx >= 0)[0]
                    out[a + rows, j + idx[rows]] = 1.0
                elif self.standardize:
                    out[a:b, j] = (src[a:b] - feat.mean) / feat.scale
                else:
                    out[a:b, j] = src[a:b]

        _map(block, [(a, min(n, a + _BLOCK)) for a in range(0, n, _BLOCK)], n)
        return out

    def transform_instances(self, instances: list[Any]) -> np.ndarray:
        """Vertex predict instances: objects keyed by training column, or lists in column order."""
        if not isinstance(instances, list) or not instances:
            raise InvalidArgument("instances must be a non-empty list.")
        columns: dict[str, list[Any]] = {f.name: [] for f in self.features}
        lower = {f.name.lower(): f.name for f in self.features}
        for i, inst in enumerate(instances):
            if isinstance(inst, dict):
                keyed = {lower.get(str(k).lower(), str(k)): v for k, v in inst.items()}
                missing = [f.name for f in self.features if f.name not in keyed]
                if missing:
                    raise InvalidArgument(f"instances[{i}] is missing {', '.join(missing)}.")
                for f in self.features:
                    columns[f.name].append(keyed[f.name])
            elif isinstance(inst, list) and len(inst) == len(self.features):
                for f, v in zip(self.features, inst, strict=True):
                    columns[f.name].append(v)
            else:
                raise InvalidArgument(
                    f"instances[{i}] must be an object keyed by {', '.join(self.names)} "
                    f"or a list of {len(self.features)} values."
                )
        # Straight to numpy (no arrow round trip): this is the online prediction path.
        n = len(instances)
        out = np.zeros((n, self.width), dtype=np.float64)
        for f, sl in self.dimension_slices():
            values = columns[f.name]
            if f.kind == CATEGORICAL:
                index = {c: i for i, c in enumerate(f.categories)}
                for row, v in enumerate(values):
                    key = None if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
                    hit = index.get(key)
                    if hit is not None:
                        out[row, sl.start + hit] = 1.0
                continue
            if f.kind == TIMESTAMP:
                try:
                    stamps = pc.cast(pa.array(values), pa.timestamp("us", tz="UTC"))
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                    raise InvalidArgument(f"{f.name} must be a timestamp: {exc}") from None
                x = _numeric(stamps, TIMESTAMP)
            else:
                for v in values:
                    if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                        raise InvalidArgument(f"{f.name} must be a number, got {v!r}.")
                x = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            if not np.isfinite(x).all():
                if np.isinf(x).any():
                    raise InvalidArgument(f"{f.name} must be finite.")
                x = np.where(np.isnan(x), f.mean, x)
            out[:, sl.start] = (x - f.mean) / f.scale if self.standardize else x
        return out

    # -- storage ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"standardize": self.standardize, "features": [asdict(f) for f in self.features]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureEncoder:
        return cls([Feature(**f) for f in data["features"]], bool(data["standardize"]))

    def dimension_slices(self) -> list[tuple[Feature, slice]]:
        out = []
        j = 0
        for f in self.features:
            out.append((f, slice(j, j + f.width)))
            j += f.width
        return out

    def unstandardize(self, matrix: np.ndarray) -> np.ndarray:
        """Map encoded centroids back to feature units (numeric dimensions only)."""
        out = matrix.copy()
        if not self.standardize:
            return out
        for f, sl in self.dimension_slices():
            if f.kind != CATEGORICAL:
                out[:, sl] = out[:, sl] * f.scale + f.mean
        return out
