"""Model loaders: one factory per framework, turning an artifact directory into a predictor.

A factory is `factory(artifact_dir: Path, spec: DeployedModelSpec) -> predictor`. A predictor has
`predict(instances: list, parameters: dict | None) -> list` (one JSON-native prediction per
instance) and may also have:

- `validate(instances: list) -> None`: raise `InvalidArgument` naming the bad instance; called per
  request before requests are coalesced into one batch;
- `batchable: bool`: rows are independent, so instances of several requests may be predicted in
  one call (on for the built-in sklearn and xgboost servers);
- `explain(instances, parameters) -> list`: explanations for `:explain`;
- `describe() -> dict`: facts shown in the replica status (e.g. the expected feature count).

Replicas are separate processes, so a factory must be importable by name (a module-level
function or class); the runtime passes `module:qualname` to the replica, which imports it. A
factory that cannot be imported (a closure) is run inside the server process instead.

Only files inside the artifact store are ever unpickled: the runtime checks the artifact
directory against the store root before any factory runs, and the built-in loaders refuse
model files that resolve (through symlinks) outside the artifact directory.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopml.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from loopml.serving.spec import DeployedModelSpec

LoaderFactory = Callable[[Path, "DeployedModelSpec"], Any]

_LOADERS: dict[str, LoaderFactory] = {}


def register_loader(framework: str, factory: LoaderFactory) -> None:
    """Register (or replace) the loader for a framework name such as "sklearn" or "bqml-kmeans"."""
    _LOADERS[framework] = factory


def get_loader(framework: str) -> LoaderFactory:
    factory = _LOADERS.get(framework)
    if factory is None:
        known = ", ".join(sorted(_LOADERS)) or "none"
        raise FailedPrecondition(
            f"No model server for framework {framework!r} (known: {known}, custom-container)."
        )
    return factory


def known_frameworks() -> list[str]:
    return sorted(_LOADERS)


def factory_ref(framework: str) -> str | None:
    """`module:qualname` of a framework's factory when a replica process can import it, else None."""
    factory = get_loader(framework)
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        return None
    try:
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qualname}" if target is factory else None


def import_factory(ref: str) -> LoaderFactory:
    module_name, _, qualname = ref.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target  # type: ignore[no-any-return]


def to_native(value: Any) -> Any:
    """numpy arrays/scalars → JSON-native Python values."""
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    if isinstance(value, list | tuple):
        return [to_native(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_native(v) for k, v in value.items()}
    return value


def model_file(artifact_dir: Path, names: tuple[str, ...]) -> Path:
    """The first of `names` present in the artifact directory, refusing symlinks out of it."""
    base = artifact_dir.resolve()
    for name in names:
        candidate = base / name
        if candidate.exists():
            resolved = candidate.resolve()
            if not resolved.is_relative_to(base):
                raise FailedPrecondition(f"{name} resolves outside the model's artifact directory.")
            return resolved
    present = sorted(p.name for p in base.iterdir()) if base.is_dir() else []
    raise FailedPrecondition(
        f"No model file in {artifact_dir}: expected one of {', '.join(names)} (found: {present or 'nothing'})."
    )


# -- tabular validation shared by the built-in servers ------------------------------------------


def check_rows(instances: Any, n_features: int | None, names: list[str] | None) -> list[list[Any]]:
    """Instances as rows of features; dict instances are ordered by the model's feature names."""
    if not isinstance(instances, list):
        raise InvalidArgument("'instances' must be a list of instances.")
    rows: list[list[Any]] = []
    for i, inst in enumerate(instances):
        if isinstance(inst, dict):
            if not names:
                raise InvalidArgument(
                    f"instance {i} is an object, but the model has no feature names: send a list of "
                    f"{n_features if n_features is not None else 'N'} values."
                )
            missing = [n for n in names if n not in inst]
            if missing:
                raise InvalidArgument(f"instance {i} lacks feature(s) {missing}; the model expects {names}.")
            inst = [inst[n] for n in names]
        elif not isinstance(inst, list):
            want = f"a list of {n_features} values" if n_features is not None else "a list of values"
            raise InvalidArgument(f"instance {i} is a {type(inst).__name__}; the model expects {want}.")
        if n_features is not None and len(inst) != n_features:
            raise InvalidArgument(f"instance {i} has {len(inst)} features, the model expects {n_features}.")
        rows.append(inst)
    return rows


def as_matrix(rows: list[list[Any]]) -> Any:
    import numpy as np

    try:
        return np.asarray(rows, dtype=np.float64)
    except (ValueError, TypeError):
        return np.asarray(rows, dtype=object)


def bad_value_error(
    rows: list[list[Any]], exc: BaseException, n_features: int | None
) -> InvalidArgument | None:
    """When a model refused non-numeric input: an error naming the first instance and value at fault.

    Only called after `predict` raised on an object matrix (a model of numbers fed a string, a
    list or an object); models that take strings (pipelines with encoders) never get here.
    """
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, int | float):
                want = f"{n_features} numbers" if n_features is not None else "numbers"
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                return InvalidArgument(
                    f"instance {i}: value {j} is {shown} ({type(value).__name__}); the model expects {want} "
                    f"({type(exc).__name__}: {exc})"
                )
    return None


class SklearnPredictor:
    """The built-in scikit-learn server (stands for `…/prediction/sklearn-cpu.*`)."""

    batchable = True

    def __init__(self, model: Any) -> None:
        self.model = model
        n = getattr(model, "n_features_in_", None)
        self.n_features: int | None = int(n) if n is not None else None
        names = getattr(model, "feature_names_in_", None)
        self.feature_names: list[str] | None = [str(x) for x in names] if names is not None else None

    def describe(self) -> dict[str, Any]:
        return {"expectedFeatures": self.n_features, "modelClass": type(self.model).__name__}

    def validate(self, instances: Any) -> None:
        check_rows(instances, self.n_features, self.feature_names)

    def predict(self, instances: list[Any], parameters: dict[str, Any] | None = None) -> list[Any]:
        rows = check_rows(instances, self.n_features, self.feature_names)
        if not rows:
            return []
        # "X does not have valid feature names" warnings are silenced once per replica process.
        matrix = as_matrix(rows)
        try:
            return to_native(self.model.predict(matrix))  # type: ignore[no-any-return]
        except (ValueError, TypeError) as exc:
            named = bad_value_error(rows, exc, self.n_features) if matrix.dtype == object else None
            if named is not None:
                raise named from None
            raise


def load_sklearn(artifact_dir: Path, spec: DeployedModelSpec) -> SklearnPredictor:
    import joblib

    path = model_file(artifact_dir, ("model.joblib", "model.pkl", "model.pickle"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = joblib.load(path)
    except Exception as exc:
        raise FailedPrecondition(f"Cannot load {path.name}: {type(exc).__name__}: {exc}") from exc
    if not hasattr(model, "predict"):
        raise FailedPrecondition(f"{path.name} holds a {type(model).__name__}, which has no predict().")
    return SklearnPredictor(model)


class XGBoostPredictor:
    """The built-in XGBoost server (stands for `…/prediction/xgboost-cpu.*`)."""

    batchable = True

    def __init__(self, booster: Any) -> None:
        self.booster = booster
        self.n_features: int | None = int(booster.num_features()) or None
        names = booster.feature_names
        self.feature_names: list[str] | None = list(names) if names else None

    def describe(self) -> dict[str, Any]:
        return {"expectedFeatures": self.n_features, "modelClass": "xgboost.Booster"}

    def validate(self, instances: Any) -> None:
        check_rows(instances, self.n_features, self.feature_names)

    def predict(self, instances: list[Any], parameters: dict[str, Any] | None = None) -> list[Any]:
        import xgboost as xgb

        rows = check_rows(instances, self.n_features, self.feature_names)
        if not rows:
            return []
        array = as_matrix(rows)
        if array.dtype == object:  # XGBoost takes numbers only
            named = bad_value_error(rows, TypeError("non-numeric input"), self.n_features)
            if named is not None:
                raise named
        matrix = xgb.DMatrix(array, feature_names=self.feature_names)
        return to_native(self.booster.predict(matrix))  # type: ignore[no-any-return]


def load_xgboost(artifact_dir: Path, spec: DeployedModelSpec) -> Any:
    import xgboost as xgb

    path = model_file(artifact_dir, ("model.bst", "model.json", "model.ubj", "model.joblib", "model.pkl"))
    if path.suffix in (".joblib", ".pkl"):
        import joblib

        model = joblib.load(path)
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        if not isinstance(booster, xgb.Booster):
            return SklearnPredictor(model)
    else:
        booster = xgb.Booster()
        try:
            booster.load_model(str(path))
        except xgb.core.XGBoostError as exc:
            raise FailedPrecondition(f"Cannot load {path.name} as an XGBoost Booster: {exc}") from exc
    return XGBoostPredictor(booster)


register_loader("sklearn", load_sklearn)
register_loader("xgboost", load_xgboost)


def _register_python() -> None:
    from loopml.serving.python_predictor import load_python

    register_loader("python", load_python)


_register_python()
