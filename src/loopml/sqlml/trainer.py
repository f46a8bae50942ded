"""From the training query's rows and the checked options to a trained SqlModel."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import pyarrow as pa
from threadpoolctl import ThreadpoolController

from loopml.errors import InvalidQuery
from loopml.sqlml import kmeans, supervised
from loopml.sqlml import options as opts
from loopml.sqlml.features import FeatureEncoder, bq_type
from loopml.sqlml.model import SqlModel

log = logging.getLogger(__name__)

_threadpools: ThreadpoolController | None = None


def _one_blas_thread() -> Any:
    """A context holding BLAS to one thread (we run our own threads; BLAS threads would only contend).

    The controller is built once: inspecting the loaded libraries costs milliseconds per call.
    """
    global _threadpools
    if _threadpools is None:
        _threadpools = ThreadpoolController()
    return _threadpools.limit(limits=1, user_api="blas")


def _find(table: pa.Table, name: str, option: str) -> str:
    for col in table.column_names:
        if col.lower() == name.lower():
            return col
    raise InvalidQuery(
        f"Column {name} named by {option} is not in the training query; it returns "
        f"{', '.join(table.column_names)}."
    )


def default_num_clusters(n: int) -> int:
    """BigQuery's default log10(n), rounded, clamped into [2, 100]."""
    return int(min(100, max(2, round(math.log10(max(n, 1))))))


def train_model(table: pa.Table, o: dict[str, Any], *, warm: SqlModel | None = None) -> SqlModel:
    seen: dict[str, str] = {}
    for col in table.column_names:
        if col.lower() in seen:
            raise InvalidQuery(
                f"The training query returns column {col} more than once; alias the duplicates."
            )
        seen[col.lower()] = col
    if table.num_rows == 0:
        raise InvalidQuery("The training query returned no rows; a model needs training data.")
    started = time.perf_counter()
    model_type = o["MODEL_TYPE"]
    if model_type == opts.KMEANS:
        model = _train_kmeans(table, o, warm)
    else:
        if o.get("WARM_START"):
            raise InvalidQuery(f"WARM_START is not supported for {model_type} in loopml.")
        model = _train_supervised(table, o)
    model.info["training_rows"] = table.num_rows
    model.info["training_seconds"] = round(time.perf_counter() - started, 4)
    log.info("trained %s on %d rows in %.3fs", model_type, table.num_rows, model.info["training_seconds"])
    return model


def _train_kmeans(table: pa.Table, o: dict[str, Any], warm: SqlModel | None) -> SqlModel:
    init_col = _find(table, o["KMEANS_INIT_COL"], "KMEANS_INIT_COL") if o["KMEANS_INIT_COL"] else None
    features = [c for c in table.column_names if c != init_col]
    if warm is not None:
        if warm.kmeans is None:
            raise InvalidQuery("WARM_START needs an existing KMEANS model of the same name.")
        if [f.lower() for f in warm.encoder.names] != [f.lower() for f in features]:
            raise InvalidQuery(
                "WARM_START needs the same feature columns as the existing model: "
                f"{', '.join(warm.encoder.names)}."
            )
        encoder = warm.encoder
        x = encoder.transform(table)
    else:
        encoder, x = FeatureEncoder.fit_transform(table, features, standardize=o["STANDARDIZE_FEATURES"])
    n = x.shape[0]
    k = o["NUM_CLUSTERS"]
    if init_col is not None:
        col = table.column(init_col)
        if not pa.types.is_boolean(col.type):
            raise InvalidQuery(f"KMEANS_INIT_COL {init_col} must be a BOOL column, not {bq_type(col.type)}.")
        mask = np.asarray(col.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
        count = int(mask.sum())
        if k is None:
            k = count
        if count != k:
            raise InvalidQuery(
                f"KMEANS_INIT_COL {init_col} has {count} TRUE rows; it must have NUM_CLUSTERS = {k}."
            )
        if not 2 <= k <= 100:
            raise InvalidQuery(
                f"KMEANS_INIT_COL {init_col} selects {k} centroids; NUM_CLUSTERS must be in [2, 100]."
            )
        init = x[mask]
    elif warm is not None and warm.kmeans is not None:
        if k is not None and k != warm.kmeans.k:
            raise InvalidQuery(f"WARM_START keeps NUM_CLUSTERS = {warm.kmeans.k}; got {k}.")
        k = warm.kmeans.k
        init = warm.kmeans.centroids
    else:
        if k is None:
            k = default_num_clusters(n)
        if n < k:
            raise InvalidQuery(f"NUM_CLUSTERS is {k} but the training query returned only {n} rows.")
        with _one_blas_thread():
            init = kmeans.best_start(
                x,
                k,
                o["KMEANS_INIT_METHOD"],
                o["DISTANCE_TYPE"],
                max_iterations=o["MAX_ITERATIONS"],
                min_rel_progress=o["MIN_REL_PROGRESS"],
            )
    with _one_blas_thread():
        params = kmeans.train(
            x,
            k,
            init=init,
            distance_type=o["DISTANCE_TYPE"],
            max_iterations=o["MAX_ITERATIONS"],
            early_stop=o["EARLY_STOP"],
            min_rel_progress=o["MIN_REL_PROGRESS"],
        )
    resolved = dict(o)
    resolved["NUM_CLUSTERS"] = k
    return SqlModel(model_type=opts.KMEANS, options=resolved, encoder=encoder, kmeans=params)


def _train_supervised(table: pa.Table, o: dict[str, Any]) -> SqlModel:
    model_type = o["MODEL_TYPE"]
    label = _find(table, o["INPUT_LABEL_COLS"][0], "INPUT_LABEL_COLS")
    features = [c for c in table.column_names if c != label]
    if not features:
        raise InvalidQuery("The training query has no feature columns besides the label.")
    standardize = model_type in (opts.LINEAR_REG, opts.LOGISTIC_REG)
    encoder, x = FeatureEncoder.fit_transform(table, features, standardize=standardize)
    y, classes, ltype = supervised.encode_labels(table.column(label), model_type, label)
    params = supervised.train(np.ascontiguousarray(x), y, classes, ltype, label, o)
    resolved = dict(o)
    resolved["INPUT_LABEL_COLS"] = [label]
    return SqlModel(model_type=model_type, options=resolved, encoder=encoder, supervised=params)
