"""The ML.* table functions, computed on arrow tables (output columns as BigQuery ML names them)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from loopml.errors import InvalidArgument, InvalidQuery
from loopml.sqlml import kmeans, skew, supervised
from loopml.sqlml import options as opts
from loopml.sqlml.features import CATEGORICAL, column_statistics
from loopml.sqlml.kmeans_pass import assign
from loopml.sqlml.model import SqlModel

NEAREST_TYPE = pa.list_(pa.struct([("CENTROID_ID", pa.int64()), ("DISTANCE", pa.float64())]))
CATEGORY_TYPE = pa.list_(pa.struct([("category", pa.string()), ("value", pa.float64())]))
CLUSTER_INFO_TYPE = pa.list_(
    pa.struct([("centroid_id", pa.int64()), ("cluster_radius", pa.float64()), ("cluster_size", pa.int64())])
)


def _check_settings(function: str, settings: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(settings) - allowed)
    if unknown:
        hint = f"; allowed: {', '.join(sorted(allowed))}" if allowed else ""
        raise InvalidQuery(f"{function} does not take the STRUCT field {unknown[0]}{hint}.")


def _with_inputs(out: dict[str, pa.Array], table: pa.Table) -> pa.Table:
    taken = {name.lower() for name in out}
    for name in table.column_names:
        if name.lower() in taken:
            raise InvalidQuery(
                f"The input column {name} clashes with an output column of the ML function; rename it."
            )
        out[name] = table.column(name)
    return pa.table(out)


def _pairs(ids: np.ndarray, values: np.ndarray, struct_type: pa.DataType) -> pa.Array:
    """A list<struct<id, value>> array from two (n, m) matrices."""
    n, m = ids.shape
    struct = pa.StructArray.from_arrays(
        [pa.array(ids.ravel(), struct_type.value_type.field(0).type), pa.array(values.ravel(), pa.float64())],
        fields=list(struct_type.value_type),
    )
    offsets = pa.array(np.arange(0, n * m + 1, m, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, struct, type=struct_type)


# -- ML.PREDICT ----------------------------------------------------------------------------------
def predict(model: SqlModel, table: pa.Table, settings: dict[str, Any]) -> pa.Table:
    _check_settings("ML.PREDICT", settings, {"threshold"} if model.model_type in opts.CLASSIFIERS else set())
    x = model.encoder.transform(table)
    if model.kmeans is not None:
        params = model.kmeans
        order, nearest = kmeans.nearest(x, params, min(params.k, 5))
        out: dict[str, pa.Array] = {
            "CENTROID_ID": pa.array(order[:, 0] + 1, pa.int64()),
            "NEAREST_CENTROIDS_DISTANCE": _pairs(order + 1, nearest, NEAREST_TYPE),
        }
        return _with_inputs(out, table)
    params_s = _sup(model)
    label = params_s.label
    result = supervised.predict(params_s, x)
    if not params_s.classes:
        return _with_inputs({f"predicted_{label}": pa.array(result, pa.float64())}, table)
    threshold = settings.get("threshold")
    if threshold is not None:
        if (
            len(params_s.classes) != 2
            or isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
        ):
            raise InvalidQuery(
                "STRUCT(threshold) of ML.PREDICT needs a binary classifier and a number in [0, 1]."
            )
        if not 0.0 <= threshold <= 1.0:
            raise InvalidQuery(f"threshold must be in [0, 1], got {threshold}.")
        pred = (result[:, 1] > float(threshold)).astype(np.int64)
    else:
        pred = result.argmax(axis=1)
    ltype = _label_arrow_type(params_s)
    classes = pa.array(params_s.classes, ltype)
    n, k = result.shape
    prob_type = pa.list_(pa.struct([("label", ltype), ("prob", pa.float64())]))
    struct = pa.StructArray.from_arrays(
        [classes.take(pa.array(np.tile(np.arange(k), n))), pa.array(result.ravel(), pa.float64())],
        fields=list(prob_type.value_type),
    )
    probs = pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)), struct, type=prob_type
    )
    out = {f"predicted_{label}": classes.take(pa.array(pred)), f"predicted_{label}_probs": probs}
    return _with_inputs(out, table)


def _sup(model: SqlModel) -> supervised.SupervisedParams:
    assert model.supervised is not None
    return model.supervised


def _label_arrow_type(params: supervised.SupervisedParams) -> pa.DataType:
    return {"BOOL": pa.bool_(), "INT64": pa.int64()}.get(params.label_type, pa.string())


# -- ML.DETECT_ANOMALIES -------------------------------------------------------------------------
def detect_anomalies(model: SqlModel, table: pa.Table, settings: dict[str, Any]) -> pa.Table:
    params = model.require_kmeans("ML.DETECT_ANOMALIES")
    _check_settings("ML.DETECT_ANOMALIES", settings, {"contamination"})
    if "contamination" not in settings:
        raise InvalidQuery(
            "ML.DETECT_ANOMALIES on a KMEANS model needs STRUCT(<value> AS contamination), e.g. STRUCT(0.02 AS contamination)."
        )
    c = settings["contamination"]
    if isinstance(c, bool) or not isinstance(c, int | float):
        raise InvalidQuery(f"contamination must be a FLOAT64 in [0, 0.5], got {c!r}.")
    if not 0.0 <= float(c) <= 0.5:
        raise InvalidQuery(f"contamination must be in [0, 0.5], got {c}.")
    x = model.encoder.transform(table)
    norm, which = kmeans.normalized_distance(x, params)
    cut = kmeans.threshold(params, float(c))
    out = {
        "is_anomaly": pa.array(norm > cut, pa.bool_()),
        "normalized_distance": pa.array(norm, pa.float64()),
        "centroid_id": pa.array(which + 1, pa.int64()),
    }
    return _with_inputs(out, table)


# -- ML.EVALUATE ---------------------------------------------------------------------------------
def evaluate(model: SqlModel, table: pa.Table | None, settings: dict[str, Any]) -> pa.Table:
    _check_settings("ML.EVALUATE", settings, set())
    if model.kmeans is not None:
        params = model.kmeans
        if table is None:
            dbi, msd = params.davies_bouldin_index, params.mean_squared_distance
        else:
            x = model.encoder.transform(table)
            if x.shape[0] == 0:
                raise InvalidQuery("ML.EVALUATE got no input rows.")
            labels, best = assign(x, params.centroids, params.distance_type)
            k = params.k
            sizes = np.bincount(labels, minlength=k)
            scatter = np.divide(
                np.bincount(labels, weights=np.sqrt(best), minlength=k),
                sizes,
                out=np.zeros(k),
                where=sizes > 0,
            )
            dbi = kmeans.davies_bouldin(params.centroids, scatter, sizes, params.distance_type)
            msd = float(best.mean())
        return pa.table(
            {
                "davies_bouldin_index": pa.array([dbi], pa.float64()),
                "mean_squared_distance": pa.array([msd], pa.float64()),
            }
        )
    params_s = _sup(model)
    if table is None:
        metrics = params_s.eval_metrics
    else:
        label_col = next((c for c in table.column_names if c.lower() == params_s.label.lower()), None)
        if label_col is None:
            raise InvalidQuery(f"ML.EVALUATE needs the label column {params_s.label} in its input.")
        if params_s.classes:
            y = _class_index(table.column(label_col), params_s)
        else:
            y = supervised.encode_labels(table.column(label_col), model.model_type, params_s.label)[0]
        x = model.encoder.transform(table)
        keep = (y >= 0) if params_s.classes else ~np.isnan(y)
        if not keep.any():
            raise InvalidQuery(f"ML.EVALUATE got no input rows with a non-NULL {params_s.label}.")
        metrics = supervised.evaluate(params_s, x[keep], y[keep])
    return pa.table({name: pa.array([value], pa.float64()) for name, value in metrics.items()})


def _class_index(col: pa.ChunkedArray, params: supervised.SupervisedParams) -> np.ndarray:
    index = {v: i for i, v in enumerate(params.classes)}
    values = col.to_pylist()
    unknown = next((v for v in values if v is not None and v not in index), None)
    if unknown is not None:
        raise InvalidQuery(
            f"Label value {unknown!r} was not seen in training; classes are {params.classes!r}."
        )
    return np.array([index[v] if v is not None else -1 for v in values], dtype=np.int64)


# -- ML.CENTROIDS --------------------------------------------------------------------------------
def centroids(model: SqlModel, settings: dict[str, Any]) -> pa.Table:
    params = model.require_kmeans("ML.CENTROIDS")
    _check_settings("ML.CENTROIDS", settings, {"standardize"})
    standardize = settings.get("standardize", False)
    if not isinstance(standardize, bool):
        raise InvalidQuery(f"standardize must be TRUE or FALSE, got {standardize!r}.")
    matrix = params.centroids if standardize else model.encoder.unstandardize(params.centroids)
    ids: list[int] = []
    names: list[str] = []
    numeric: list[float | None] = []
    categorical: list[list[dict[str, Any]] | None] = []
    for i in range(params.k):
        for feat, sl in model.encoder.dimension_slices():
            ids.append(i + 1)
            names.append(feat.name)
            if feat.kind == CATEGORICAL:
                numeric.append(None)
                categorical.append(
                    [
                        {"category": "NULL" if cat is None else cat, "value": float(v)}
                        for cat, v in zip(feat.categories, matrix[i, sl], strict=True)
                    ]
                )
            else:
                numeric.append(float(matrix[i, sl][0]))
                categorical.append([])
    return pa.table(
        {
            "centroid_id": pa.array(ids, pa.int64()),
            "feature": pa.array(names, pa.string()),
            "numerical_value": pa.array(numeric, pa.float64()),
            "categorical_value": pa.array(categorical, CATEGORY_TYPE),
            "geography_value": pa.nulls(len(ids), pa.string()),
        }
    )


# -- ML.TRAINING_INFO and ML.FEATURE_INFO --------------------------------------------------------
def training_info(model: SqlModel, settings: dict[str, Any]) -> pa.Table:
    _check_settings("ML.TRAINING_INFO", settings, set())
    rows = model.kmeans.iterations if model.kmeans is not None else _sup(model).iterations
    lr = (
        model.options.get("LEARN_RATE")
        if model.model_type in (opts.BOOSTED_CLASSIFIER, opts.BOOSTED_REGRESSOR)
        else None
    )
    cols: dict[str, pa.Array] = {
        "training_run": pa.array([0] * len(rows), pa.int64()),
        "iteration": pa.array([r["iteration"] for r in rows], pa.int64()),
        "loss": pa.array([r.get("loss") for r in rows], pa.float64()),
        "eval_loss": pa.array([r.get("eval_loss") for r in rows], pa.float64()),
        "learning_rate": pa.array([lr] * len(rows), pa.float64()),
        "duration_ms": pa.array([r.get("duration_ms", 0) for r in rows], pa.int64()),
    }
    if model.kmeans is not None:
        p = model.kmeans
        final = [
            {"centroid_id": i + 1, "cluster_radius": float(p.radii[i]), "cluster_size": int(p.sizes[i])}
            for i in range(p.k)
        ]
        cols["cluster_info"] = pa.array(
            [final if j == len(rows) - 1 else [] for j in range(len(rows))], CLUSTER_INFO_TYPE
        )
    return pa.table(cols)


def feature_info(model: SqlModel, settings: dict[str, Any]) -> pa.Table:
    _check_settings("ML.FEATURE_INFO", settings, set())
    feats = model.encoder.features

    def stat(name: str) -> list[Any]:
        return [f.stats.get(name) for f in feats]

    return pa.table(
        {
            "input": pa.array([f.name for f in feats], pa.string()),
            "min": pa.array(stat("min"), pa.float64()),
            "max": pa.array(stat("max"), pa.float64()),
            "mean": pa.array(stat("mean"), pa.float64()),
            "median": pa.array(stat("median"), pa.float64()),
            "stddev": pa.array(stat("stddev"), pa.float64()),
            "category_count": pa.array(stat("category_count"), pa.int64()),
            "null_count": pa.array(stat("null_count"), pa.int64()),
            "dimension": pa.nulls(len(feats), pa.int64()),
        }
    )


def validate_data_skew(model: SqlModel, table: pa.Table, settings: dict[str, Any]) -> pa.Table:
    """One row per model feature present in the input: input, metric, threshold, value, is_anomaly."""
    opts_ = skew.parse_settings(settings, model.encoder.names)
    present = {name.lower(): name for name in table.column_names}
    rows: list[dict[str, Any]] = []
    for feat in model.encoder.features:
        actual = present.get(feat.name.lower())
        if actual is None:
            continue
        if table.num_rows == 0:
            raise InvalidQuery("ML.VALIDATE_DATA_SKEW got no input rows; skew is defined for non-empty data.")
        served = column_statistics(feat, table.column(actual))
        if feat.kind == CATEGORICAL:
            train = feat.stats.get("counts")
            metric = opts_["categorical_metric_type"]
            default = opts_["categorical_default_threshold"]
        else:
            train = feat.stats.get("histogram")
            metric = opts_["numerical_metric_type"]
            default = opts_["numerical_default_threshold"]
        if train is None:
            raise InvalidQuery(
                "This model has no training statistics; re-create it to use ML.VALIDATE_DATA_SKEW."
            )
        if feat.kind == CATEGORICAL:
            value = (
                skew.categorical_linf(train, served)
                if metric == skew.L_INFTY
                else skew.categorical_jsd(train, served)
            )
        else:
            value = skew.numeric_jsd(train, served)
        limit = opts_["thresholds"].get(feat.name, default)
        rows.append(
            {
                "input": feat.name,
                "metric": metric,
                "threshold": limit,
                "value": value,
                "is_anomaly": value > limit,
            }
        )
    if not rows:
        raise InvalidQuery(f"The input has none of the model's features ({', '.join(model.encoder.names)}).")
    schema = pa.schema(
        [
            ("input", pa.string()),
            ("metric", pa.string()),
            ("threshold", pa.float64()),
            ("value", pa.float64()),
            ("is_anomaly", pa.bool_()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def require_input(function: str, table: pa.Table | None) -> pa.Table:
    if table is None:
        raise InvalidArgument(
            f"{function} needs input data: {function}(MODEL m, TABLE t) or {function}(MODEL m, (SELECT ...))."
        )
    return table
