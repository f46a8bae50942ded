"""The built-in server for SQL models deployed to an endpoint (frameworks bqml-*).

Instances are objects keyed by the training column names (or lists in training column order).
Per instance the predictions are, matching BigQuery ML models served on Vertex AI:

- KMEANS: `{"nearest_centroid_id": [id], "centroid_distances": [d1, ...], "centroid_ids": [1, ...]}`
  with the same 1-based ids as ML.PREDICT (distances on standardised features when the model
  was trained with STANDARDIZE_FEATURES).
- LINEAR_REG / BOOSTED_TREE_REGRESSOR: `{"predicted_<label>": [value]}`.
- LOGISTIC_REG / BOOSTED_TREE_CLASSIFIER: `{"predicted_<label>": [class],
  "<label>_probs": [p, ...], "<label>_values": [class, ...]}` (classes in sorted order).

The model is read from JSON / npz / xgboost JSON files; nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from loopml.errors import InvalidArgument
from loopml.sqlml import kmeans, supervised
from loopml.sqlml.model import SqlModel


class BqmlPredictor:
    batchable = True

    def __init__(self, artifact_dir: Path) -> None:
        self.model = SqlModel.load(Path(artifact_dir))

    def describe(self) -> dict[str, Any]:
        return {"modelType": self.model.model_type, "features": self.model.encoder.names}

    def validate(self, instances: list[Any]) -> None:
        self.model.encoder.transform_instances(instances)

    def predict(self, instances: list[Any], parameters: dict[str, Any] | None = None) -> list[Any]:
        if not isinstance(instances, list):
            raise InvalidArgument("instances must be a list.")
        if not instances:
            return []
        x = self.model.encoder.transform_instances(instances)
        if self.model.kmeans is not None:
            params = self.model.kmeans
            dist = kmeans.distances(x, params)
            ids = list(range(1, params.k + 1))
            nearest = np.argmin(dist, axis=1) + 1
            return [
                {
                    "nearest_centroid_id": [int(nearest[i])],
                    "centroid_distances": [float(v) for v in dist[i]],
                    "centroid_ids": ids,
                }
                for i in range(len(instances))
            ]
        params_s = self.model.supervised
        assert params_s is not None
        out = supervised.predict(params_s, np.ascontiguousarray(x))
        label = params_s.label
        if not params_s.classes:
            return [{f"predicted_{label}": [float(v)]} for v in out]
        classes = list(params_s.classes)
        return [
            {
                f"predicted_{label}": [classes[int(np.argmax(row))]],
                f"{label}_probs": [float(p) for p in row],
                f"{label}_values": classes,
            }
            for row in out
        ]


def load_predictor(artifact_dir: Path, spec: Any = None) -> BqmlPredictor:
    """Loader factory for `loopml.serving.loaders.register_loader("bqml-kmeans", ...)` and friends."""
    return BqmlPredictor(artifact_dir)
