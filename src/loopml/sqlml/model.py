"""A trained SQL model and its directory format (no pickle anywhere).

    loopml_model.json   {"framework": "bqml-kmeans" | "bqml-linear" | "bqml-logistic" | "bqml-boosted",
                         "format": "loopml-bqml", "format_version": 1, "model_type": ..., "bqml_model": ...}
    model.json          options, feature encoder (columns, types, means, scales, categories),
                        training statistics and parameters that are not arrays
    params.npz          numeric arrays (k-means centroids, radii, quantiles), loaded with allow_pickle=False
    xgboost_model.json  boosted trees only: xgboost's JSON model format

This is loopml's own format, not a TensorFlow SavedModel; `EXPORT MODEL` writes the same files.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from loopml.errors import InvalidArgument
from loopml.sqlml import kmeans as km
from loopml.sqlml import options as opts
from loopml.sqlml import supervised as sup
from loopml.sqlml.features import FeatureEncoder

FORMAT = "loopml-bqml"
FORMAT_VERSION = 1
MANIFEST = "loopml_model.json"


@dataclass
class SqlModel:
    model_type: str
    options: dict[str, Any]
    encoder: FeatureEncoder
    kmeans: km.KMeansParams | None = None
    supervised: sup.SupervisedParams | None = None
    info: dict[str, Any] = field(default_factory=dict)  # bqml_model, training_rows, created, query, ...

    @property
    def framework(self) -> str:
        return opts.FRAMEWORKS[self.model_type]

    @property
    def label(self) -> str | None:
        return self.supervised.label if self.supervised else None

    @property
    def is_kmeans(self) -> bool:
        return self.kmeans is not None

    def require_kmeans(self, function: str) -> km.KMeansParams:
        if self.kmeans is None:
            raise InvalidArgument(
                f"{function} is only supported for KMEANS models; this is {self.model_type}."
            )
        return self.kmeans

    # -- files -----------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        manifest = {
            "framework": self.framework,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_type": self.model_type,
            "bqml_model": self.info.get("bqml_model"),
            "feature_columns": self.encoder.names,
        }
        meta: dict[str, Any] = {
            "model_type": self.model_type,
            "options": self.options,
            "encoder": self.encoder.to_json(),
            "info": self.info,
        }
        arrays: dict[str, np.ndarray] = {}
        if self.kmeans is not None:
            meta["kmeans"] = km.to_meta(self.kmeans)
            arrays.update(km.to_arrays(self.kmeans))
        if self.supervised is not None:
            meta["supervised"] = sup.to_meta(self.supervised)
            if self.supervised.booster_json is not None:
                (directory / "xgboost_model.json").write_bytes(self.supervised.booster_json)
        if arrays:
            buf = io.BytesIO()
            np.savez(buf, **cast(dict[str, Any], arrays))
            (directory / "params.npz").write_bytes(buf.getvalue())
        (directory / "model.json").write_text(json.dumps(meta, indent=1, default=_json_default))
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))

    @classmethod
    def load(cls, directory: Path) -> SqlModel:
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
            meta = json.loads((directory / "model.json").read_text())
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"{directory} is not a loopml SQL model directory: {exc}") from None
        if manifest.get("format") != FORMAT or int(manifest.get("format_version", 0)) > FORMAT_VERSION:
            raise InvalidArgument(
                f"{directory} holds an unsupported model format {manifest.get('format')!r}."
            )
        model_type = meta["model_type"]
        model = cls(
            model_type=model_type,
            options=meta["options"],
            encoder=FeatureEncoder.from_json(meta["encoder"]),
            info=meta.get("info", {}),
        )
        if "kmeans" in meta:
            with np.load(directory / "params.npz", allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            model.kmeans = km.from_stored(arrays, meta["kmeans"])
        if "supervised" in meta:
            booster = None
            if meta["supervised"].get("booster"):
                booster = (directory / "xgboost_model.json").read_bytes()
            model.supervised = sup.from_meta(model_type, meta["supervised"], booster)
        return model


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
