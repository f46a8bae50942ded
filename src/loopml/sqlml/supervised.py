"""LINEAR_REG, LOGISTIC_REG and BOOSTED_TREE_* models: training, prediction, metrics.

Engines: LINEAR_REG is solved directly (scikit-learn Ridge / ElasticNet), LOGISTIC_REG with
L-BFGS (scikit-learn), boosted trees with xgboost. The stored parameters are plain JSON
(coefficients) or xgboost's own JSON model format, so prediction never unpickles anything.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loopml.errors import InvalidQuery, Unavailable
from loopml.sqlml import options as opts
from loopml.sqlml.features import bq_type

SEED = 20240601


@dataclass
class SupervisedParams:
    model_type: str
    label: str
    label_type: str
    classes: list[Any] = field(default_factory=list)  # classifiers: label values, sorted
    coef: list[list[float]] = field(default_factory=list)  # linear/logistic: (outputs, width)
    intercept: list[float] = field(default_factory=list)
    booster_json: bytes | None = None  # boosted trees: xgboost JSON model
    iterations: list[dict[str, Any]] = field(default_factory=list)
    eval_metrics: dict[str, Any] = field(default_factory=dict)
    _booster: Any = field(default=None, repr=False, compare=False)  # loaded xgboost Booster (cache)

    @property
    def is_classifier(self) -> bool:
        return self.model_type in opts.CLASSIFIERS


# -- labels and splits ---------------------------------------------------------------------------
def encode_labels(col: pa.ChunkedArray, model_type: str, label: str) -> tuple[np.ndarray, list[Any], str]:
    """Target vector, class list (classifiers) and BigQuery type of the label column."""
    t = col.type
    ltype = bq_type(t)
    if model_type in opts.CLASSIFIERS:
        if not (pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_string(t)):
            raise InvalidQuery(
                f"Label column {label} has type {ltype}; a classifier needs BOOL, INT64 or STRING."
            )
        values = col.to_pylist()
        classes = sorted({v for v in values if v is not None})
        if len(classes) < 2:
            raise InvalidQuery(
                f"Label column {label} has {len(classes)} distinct value(s); a classifier needs 2."
            )
        if model_type == opts.LOGISTIC_REG and len(classes) > 50:
            raise InvalidQuery(
                f"Label column {label} has {len(classes)} classes; LOGISTIC_REG supports at most 50."
            )
        index = {v: i for i, v in enumerate(classes)}
        y = np.array([index[v] if v is not None else -1 for v in values], dtype=np.int64)
        return y, classes, ltype
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
        raise InvalidQuery(f"Label column {label} has type {ltype}; a regressor needs a numeric label.")
    y = np.asarray(pc.fill_null(pc.cast(col, pa.float64()), float("nan")).to_numpy(), dtype=np.float64)
    return y, [], ltype


def split(n: int, method: str, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, eval rows) for AUTO_SPLIT / RANDOM / NO_SPLIT, seeded."""
    if method == "NO_SPLIT":
        return np.arange(n), np.arange(0)
    if method == "AUTO_SPLIT":
        if n < 500:
            return np.arange(n), np.arange(0)
        fraction = 0.2 if n <= 50_000 else 10_000 / n
    n_eval = round(n * fraction)
    if n_eval == 0:
        return np.arange(n), np.arange(0)
    perm = np.random.default_rng(SEED).permutation(n)
    return np.sort(perm[n_eval:]), np.sort(perm[:n_eval])


# -- training ------------------------------------------------------------------------------------
def train(
    x: np.ndarray, y: np.ndarray, classes: list[Any], ltype: str, label: str, o: dict[str, Any]
) -> SupervisedParams:
    model_type = o["MODEL_TYPE"]
    keep = (y >= 0) if classes else ~np.isnan(y)
    x, y = x[keep], y[keep]
    if len(y) < 2:
        raise InvalidQuery(
            f"The training query returned {len(y)} rows with a non-NULL {label}; need at least 2."
        )
    train_idx, eval_idx = split(len(y), o["DATA_SPLIT_METHOD"], o["DATA_SPLIT_EVAL_FRACTION"])
    if classes and len(np.unique(y[train_idx])) < 2:
        raise InvalidQuery(f"The training split has a single value of {label}; a classifier needs 2.")
    params = SupervisedParams(model_type=model_type, label=label, label_type=ltype, classes=classes)
    xt, yt = x[train_idx], y[train_idx]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if model_type == opts.LINEAR_REG:
            _fit_linear(params, xt, yt, o)
        elif model_type == opts.LOGISTIC_REG:
            _fit_logistic(params, xt, yt, o)
        else:
            _fit_boosted(params, xt, yt, x[eval_idx], y[eval_idx], o)
    ex, ey = (x[eval_idx], y[eval_idx]) if len(eval_idx) else (xt, yt)
    params.eval_metrics = evaluate(params, ex, ey)
    if model_type != opts.BOOSTED_CLASSIFIER and model_type != opts.BOOSTED_REGRESSOR:
        loss_key = "log_loss" if classes else "mean_squared_error"
        train_loss = evaluate(params, xt, yt).get(loss_key)
        eval_loss = params.eval_metrics.get(loss_key) if len(eval_idx) else None
        params.iterations = [{"iteration": 0, "loss": train_loss, "eval_loss": eval_loss, "duration_ms": 0}]
    return params


def _fit_linear(params: SupervisedParams, x: np.ndarray, y: np.ndarray, o: dict[str, Any]) -> None:
    from sklearn.linear_model import ElasticNet, LinearRegression, Ridge

    l1, l2 = o["L1_REG"], o["L2_REG"]
    model: Any
    if l1 > 0:
        alpha = (l1 / 2 + l2) / len(y)
        model = ElasticNet(
            alpha=alpha, l1_ratio=(l1 / 2) / (l1 / 2 + l2), max_iter=max(1000, o["MAX_ITERATIONS"])
        )
    elif l2 > 0:
        model = Ridge(alpha=l2)
    else:
        model = LinearRegression()
    model.fit(x, y)
    params.coef = [np.ravel(model.coef_).tolist()]
    params.intercept = [
        float(np.ravel(model.intercept_)[0]) if np.ndim(model.intercept_) else float(model.intercept_)
    ]


def _fit_logistic(params: SupervisedParams, x: np.ndarray, y: np.ndarray, o: dict[str, Any]) -> None:
    from sklearn.linear_model import LogisticRegression

    l1, l2 = o["L1_REG"], o["L2_REG"]
    kwargs: dict[str, Any] = {"max_iter": max(100, o["MAX_ITERATIONS"]), "random_state": SEED}
    if o["AUTO_CLASS_WEIGHTS"]:
        kwargs["class_weight"] = "balanced"
    if l1 > 0:
        kwargs.update(penalty="elasticnet", solver="saga", C=1.0 / (l1 + l2), l1_ratio=l1 / (l1 + l2))
    elif l2 > 0:
        kwargs.update(C=1.0 / l2)
    else:
        kwargs.update(C=1e6)
    model = LogisticRegression(**kwargs)
    model.fit(x, y)
    params.coef = np.atleast_2d(model.coef_).tolist()
    params.intercept = np.ravel(model.intercept_).tolist()


def _xgb() -> Any:
    try:
        import xgboost
    except ImportError:  # pragma: no cover - xgboost is in the default test environment
        raise Unavailable("BOOSTED_TREE models need xgboost: pip install 'loopml[xgboost]'.") from None
    return xgboost


def _fit_boosted(
    params: SupervisedParams, x: np.ndarray, y: np.ndarray, ex: np.ndarray, ey: np.ndarray, o: dict[str, Any]
) -> None:
    xgb = _xgb()
    k = len(params.classes)
    if not params.classes:
        objective, metric = "reg:squarederror", "rmse"
    elif k == 2:
        objective, metric = "binary:logistic", "logloss"
    else:
        objective, metric = "multi:softprob", "mlogloss"
    weights = None
    if params.classes and o.get("AUTO_CLASS_WEIGHTS"):
        counts = np.bincount(y.astype(np.int64), minlength=k).astype(float)
        weights = (len(y) / (k * np.maximum(counts, 1)))[y.astype(np.int64)]
    booster_params: dict[str, Any] = {
        "objective": objective,
        "eval_metric": metric,
        "eta": o["LEARN_RATE"],
        "max_depth": o["MAX_TREE_DEPTH"],
        "subsample": o["SUBSAMPLE"],
        "gamma": o["MIN_SPLIT_LOSS"],
        "alpha": o["L1_REG"],
        "lambda": o["L2_REG"],
        "min_child_weight": o["MIN_TREE_CHILD_WEIGHT"],
        "colsample_bytree": o["COLSAMPLE_BYTREE"],
        "colsample_bylevel": o["COLSAMPLE_BYLEVEL"],
        "colsample_bynode": o["COLSAMPLE_BYNODE"],
        "num_parallel_tree": o["NUM_PARALLEL_TREE"],
        "tree_method": "hist" if o["TREE_METHOD"] == "AUTO" else o["TREE_METHOD"].lower(),
        "seed": SEED,
        "nthread": 2,
        "verbosity": 0,
    }
    if objective == "multi:softprob":
        booster_params["num_class"] = k
    dtrain = xgb.DMatrix(x, label=y, weight=weights)
    evals = [(dtrain, "train")]
    if len(ey):
        evals.append((xgb.DMatrix(ex, label=ey), "eval"))
    history: dict[str, Any] = {}
    booster = xgb.train(
        booster_params,
        dtrain,
        num_boost_round=o["MAX_ITERATIONS"],
        evals=evals,
        evals_result=history,
        verbose_eval=False,
    )
    train_loss = [float(v) for v in history["train"][metric]]
    eval_loss = [float(v) for v in history["eval"][metric]] if "eval" in history else [None] * len(train_loss)
    rounds = len(train_loss)
    if o["EARLY_STOP"]:
        watch = eval_loss if eval_loss[0] is not None else train_loss
        for i in range(1, len(watch)):
            prev, cur = watch[i - 1], watch[i]
            if prev is None or cur is None:
                break
            if prev <= 0 or (prev - cur) / prev < o["MIN_REL_PROGRESS"]:
                rounds = i + 1
                break
    if rounds < len(train_loss):
        booster = booster[:rounds]
    params.booster_json = bytes(booster.save_raw(raw_format="json"))
    params.iterations = [
        {"iteration": i, "loss": train_loss[i], "eval_loss": eval_loss[i], "duration_ms": 0}
        for i in range(rounds)
    ]


# -- prediction ----------------------------------------------------------------------------------
def predict(params: SupervisedParams, x: np.ndarray) -> np.ndarray:
    """Regressors: (n,) values. Classifiers: (n, classes) probabilities."""
    if params.booster_json is not None:
        xgb = _xgb()
        if params._booster is None:
            booster = xgb.Booster()
            booster.load_model(bytearray(params.booster_json))
            params._booster = booster
        out = np.asarray(params._booster.predict(xgb.DMatrix(x)), dtype=np.float64)
        if params.classes and out.ndim == 1:
            return np.stack([1.0 - out, out], axis=1)
        return out
    coef = np.asarray(params.coef, dtype=np.float64)
    z = x @ coef.T + np.asarray(params.intercept)[None, :]
    if not params.classes:
        return z[:, 0]
    if z.shape[1] == 1:
        p1 = 1.0 / (1.0 + np.exp(-np.clip(z[:, 0], -500, 500)))
        return np.stack([1.0 - p1, p1], axis=1)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# -- metrics -------------------------------------------------------------------------------------
def evaluate(params: SupervisedParams, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """BigQuery ML.EVALUATE metrics for a regressor or classifier, on encoded rows."""
    from sklearn import metrics as m

    out = predict(params, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not params.classes:
            msle = float(m.mean_squared_log_error(y, out)) if (y.min() > -1 and out.min() > -1) else None
            return {
                "mean_absolute_error": float(m.mean_absolute_error(y, out)),
                "mean_squared_error": float(m.mean_squared_error(y, out)),
                "mean_squared_log_error": msle,
                "median_absolute_error": float(m.median_absolute_error(y, out)),
                "r2_score": float(m.r2_score(y, out)) if len(y) > 1 else None,
                "explained_variance": float(m.explained_variance_score(y, out)) if len(y) > 1 else None,
            }
        k = len(params.classes)
        labels = list(range(k))
        pred = out.argmax(axis=1)
        binary = k == 2
        avg = "binary" if binary else "macro"
        try:
            auc = (
                float(m.roc_auc_score(y, out[:, 1]))
                if binary
                else float(m.roc_auc_score(y, out, multi_class="ovr", labels=labels))
            )
        except ValueError:
            auc = None
        return {
            "precision": float(m.precision_score(y, pred, average=avg, labels=labels, zero_division=0)),
            "recall": float(m.recall_score(y, pred, average=avg, labels=labels, zero_division=0)),
            "accuracy": float(m.accuracy_score(y, pred)),
            "f1_score": float(m.f1_score(y, pred, average=avg, labels=labels, zero_division=0)),
            "log_loss": float(m.log_loss(y, np.clip(out, 1e-15, 1.0), labels=labels)),
            "roc_auc": auc,
        }


# -- storage -------------------------------------------------------------------------------------
def to_meta(params: SupervisedParams) -> dict[str, Any]:
    return {
        "label": params.label,
        "label_type": params.label_type,
        "classes": params.classes,
        "coef": params.coef,
        "intercept": params.intercept,
        "iterations": params.iterations,
        "eval_metrics": params.eval_metrics,
        "booster": "xgboost_model.json" if params.booster_json is not None else None,
    }


def from_meta(model_type: str, meta: dict[str, Any], booster_json: bytes | None) -> SupervisedParams:
    return SupervisedParams(
        model_type=model_type,
        label=meta["label"],
        label_type=meta["label_type"],
        classes=list(meta.get("classes") or []),
        coef=meta.get("coef") or [],
        intercept=meta.get("intercept") or [],
        booster_json=booster_json,
        iterations=list(meta.get("iterations") or []),
        eval_metrics=dict(meta.get("eval_metrics") or {}),
    )
