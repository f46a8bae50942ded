"""The Python predictor interface (framework "python").

The artifact directory holds a manifest `loopml_model.json` and the predictor's module::

    {"framework": "python", "predictor": "predictor:Predictor", "requirements": ["..."]}

`predictor:Predictor` names a module file in the artifact directory (`predictor.py`; dotted names
map to sub-directories) and a class in it. The class is instantiated without arguments and then
called as (every method but `load` and `predict` is optional)::

    class Predictor:
        def load(self, artifact_dir: str) -> None: ...          # read weights, once per replica
        def preprocess(self, instances: list) -> Any: ...       # per request
        def predict(self, instances, parameters=None) -> list:  # `parameters` only if declared
        def postprocess(self, predictions) -> list: ...         # per request; JSON-native result
        def explain(self, instances, parameters=None) -> list:  # enables :explain

`requirements` (optional) makes the replicas run in a venv layered on loopml's, with them
installed (see `FactoryMixin._replica_python`). A predictor is not batched across requests unless the class sets `batchable = True`. The module
is loaded from the immutable snapshot of the artifacts taken at upload, so a deployed version
never changes under a running endpoint.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopml.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from loopml.serving.spec import DeployedModelSpec

MANIFEST = "loopml_model.json"


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    path = artifact_dir / MANIFEST
    if not path.is_file():
        raise FailedPrecondition(f"No {MANIFEST} in {artifact_dir}: a Python predictor needs one.")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise FailedPrecondition(f"{MANIFEST} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise FailedPrecondition(f"{MANIFEST} must hold a JSON object.")
    return data


class PythonPredictor:
    """Adapts a user predictor class to the runtime's predictor protocol."""

    def __init__(self, user: Any) -> None:
        self.user = user
        self.batchable = bool(getattr(user, "batchable", False))
        self._pre = getattr(user, "preprocess", None)
        self._post = getattr(user, "postprocess", None)
        self._predict_takes_params = _takes_parameters(user.predict)
        explain = getattr(user, "explain", None)
        self._explain = explain
        self._explain_takes_params = _takes_parameters(explain) if explain else False
        validate = getattr(user, "validate", None)
        if validate is not None:
            self.validate = validate

    @property
    def can_explain(self) -> bool:
        return self._explain is not None

    def describe(self) -> dict[str, Any]:
        return {"predictorClass": type(self.user).__name__}

    def predict(self, instances: list[Any], parameters: dict[str, Any] | None = None) -> list[Any]:
        if not isinstance(instances, list):
            raise InvalidArgument("'instances' must be a list of instances.")
        data = self._pre(instances) if self._pre else instances
        out = self.user.predict(data, parameters) if self._predict_takes_params else self.user.predict(data)
        if self._post:
            out = self._post(out)
        from loopml.serving.loaders import to_native

        result = to_native(out)
        if not isinstance(result, list):
            raise TypeError(
                f"{type(self.user).__name__}.predict must return a list, got {type(out).__name__}"
            )
        return result

    def explain(self, instances: list[Any], parameters: dict[str, Any] | None = None) -> list[Any]:
        if self._explain is None:
            raise FailedPrecondition("This predictor has no explain() method.")
        from loopml.serving.loaders import to_native

        data = self._pre(instances) if self._pre else instances
        out = self._explain(data, parameters) if self._explain_takes_params else self._explain(data)
        return to_native(out)  # type: ignore[no-any-return]


def _takes_parameters(fn: Any) -> bool:
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def load_python(artifact_dir: Path, spec: DeployedModelSpec) -> PythonPredictor:
    manifest = read_manifest(artifact_dir)
    ref = manifest.get("predictor")
    if not isinstance(ref, str) or ":" not in ref:
        raise FailedPrecondition(
            f'{MANIFEST} must name the predictor class as "predictor": "module:Class" (got {ref!r}).'
        )
    module_name, _, class_name = ref.partition(":")
    base = artifact_dir.resolve()
    rel = Path(*module_name.split("."))
    path = (base / rel).with_suffix(".py")
    if not path.is_file():
        path = base / rel / "__init__.py"
    if not path.is_file() or not path.resolve().is_relative_to(base):
        raise FailedPrecondition(f"Predictor module {module_name!r} not found in the model's artifacts.")
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))  # helper modules next to the predictor import normally
    mod_spec = importlib.util.spec_from_file_location(module_name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise FailedPrecondition(f"Cannot import predictor module {module_name!r}.")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[module_name] = module
    try:
        mod_spec.loader.exec_module(module)
    except Exception as exc:
        raise FailedPrecondition(f"Importing {module_name} failed: {type(exc).__name__}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise FailedPrecondition(f"Predictor module {module_name!r} has no class {class_name!r}.")
    user = cls()
    if not callable(getattr(user, "predict", None)):
        raise FailedPrecondition(f"{class_name} has no predict() method.")
    load = getattr(user, "load", None)
    if callable(load):
        load(str(artifact_dir))
    return PythonPredictor(user)
