"""Predictors for batch prediction.

Built-in frameworks (sklearn, xgboost) are loaded here so a chunk is predicted with one vectorised
call on a numpy array (no per-row Python). Every other framework (BigQuery ML models, Python
predictors, custom containers) goes through the serving runtime's loader registry
(`loopml.serving.loaders`) and is called with lists of `batchSize` instances.
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from loopml.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

SKLEARN_FILES = ("model.joblib", "model.pkl", "model.pickle")
XGBOOST_BOOSTER_FILES = ("model.bst", "model.json", "model.ubj")


class Predictor(Protocol):
    def predict(self, instances: list[Any], parameters: dict[str, Any] | None = None) -> list[Any]: ...


class ArrayPredictor:
    """A model with a vectorised `predict` on 2-D numpy arrays (and pandas frames for object rows)."""

    vectorised = True

    def __init__(self, model: Any, *, booster: bool = False) -> None:
        self.model = model
        self.booster = booster
        names = None if booster else getattr(model, "feature_names_in_", None)
        self.feature_names: list[str] | None = [str(n) for n in names] if names is not None else None

    def predict_array(self, features: np.ndarray) -> np.ndarray:
        if self.booster:
            return np.asarray(self.model.inplace_predict(features))
        if self.feature_names is not None and features.shape[1] == len(self.feature_names):
            import pandas as pd  # a model fitted on a frame wants its column names back

            return np.asarray(
                self.model.predict(pd.DataFrame(features, columns=self.feature_names, copy=False))
            )
        return np.asarray(self.model.predict(features))

    def predict_frame(self, frame: Any) -> np.ndarray:
        if self.booster:
            import xgboost

            return np.asarray(self.model.predict(xgboost.DMatrix(frame)))
        return np.asarray(self.model.predict(frame))

    def predict(self, instances: list[Any], parameters: dict[str, Any] | None = None) -> list[Any]:
        if instances and all(isinstance(i, dict) for i in instances):
            import pandas as pd

            return self.predict_frame(pd.DataFrame(instances)).tolist()
        try:
            features = np.asarray(instances, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"instances are not numeric arrays of equal length: {exc}") from exc
        if features.ndim == 1:
            features = features.reshape(1, -1) if len(instances) == 1 else features.reshape(-1, 1)
        return self.predict_array(features).tolist()


def load_builtin(framework: str, artifact_dir: Path) -> ArrayPredictor | None:
    """sklearn / xgboost models from a registry snapshot; None for other frameworks."""
    if framework not in ("sklearn", "xgboost"):
        return None
    from loopml.serving.loaders import model_file

    names: tuple[str, ...] = SKLEARN_FILES
    if framework == "xgboost":
        names = XGBOOST_BOOSTER_FILES + SKLEARN_FILES
    path = model_file(artifact_dir, names)
    if path.name in XGBOOST_BOOSTER_FILES:
        import xgboost

        booster = xgboost.Booster()
        try:
            booster.load_model(str(path))
        except xgboost.core.XGBoostError as exc:
            raise FailedPrecondition(f"Cannot load {path.name} as an XGBoost Booster: {exc}") from exc
        return ArrayPredictor(booster, booster=True)
    import joblib

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = joblib.load(path)
    except Exception as exc:
        raise FailedPrecondition(f"Cannot load {path.name}: {type(exc).__name__}: {exc}") from exc
    if not hasattr(model, "predict"):
        raise FailedPrecondition(f"{path.name} holds a {type(model).__name__}, which has no predict().")
    return ArrayPredictor(model)


class _Cache:
    """Predictors by (framework, artifact dir); loading a model once per worker process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str], Any] = {}

    def get(self, key: tuple[str, str], make: Any) -> Any:
        with self._lock:
            if key not in self._items:
                self._items[key] = make()
            return self._items[key]

    def pop(self, key: tuple[str, str]) -> Any:
        with self._lock:
            return self._items.pop(key, None)


CACHE = _Cache()


def load_predictor(framework: str, artifact_dir: Path | None, spec: Any) -> Any:
    """A predictor for a model version: vectorised for built-ins, else the serving loader's."""
    if artifact_dir is not None:
        builtin = load_builtin(framework, artifact_dir)
        if builtin is not None:
            return builtin
    if framework == "custom-container":  # started by the runner (containers.py) and cached
        raise FailedPrecondition("Custom-container models are started by the batch runner, not loaded.")
    from loopml.serving.loaders import get_loader

    if artifact_dir is None:
        raise FailedPrecondition(f"The model version has no artifacts to load a {framework!r} model from.")
    return get_loader(framework)(artifact_dir, spec)


def close_predictor(predictor: Any) -> None:
    for name in ("close", "stop", "shutdown"):
        method = getattr(predictor, name, None)
        if callable(method):
            try:
                method()
            except Exception:
                log.exception("closing batch predictor failed")
            return
