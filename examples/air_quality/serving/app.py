"""Flask prediction server for the air-quality regressor (W4), a Vertex custom serving container.

At import it reads `AIP_HEALTH_ROUTE` and `AIP_PREDICT_ROUTE` (a missing one raises KeyError, as in
the workshop), then loads `normalization_stats.json` and the newest `model_<timestamp>.pkl` from
`AIP_STORAGE_URI` through google-cloud-storage ("newest" compares the whole timestamp).

Request `{"instances": [{"PT08.S1(CO)": x, ..., "AH": x}]}`; each value is z-scored with the saved
statistics (a feature missing from them uses mean 0, std 1). Response
`{"predictions": [{"result": <normalised CO(GT)>}]}`.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
from flask import Flask, jsonify, request
from google.cloud import storage

FEATURES = [
    "PT08.S1(CO)",
    "NMHC(GT)",
    "C6H6(GT)",
    "PT08.S2(NMHC)",
    "NOx(GT)",
    "PT08.S3(NOx)",
    "NO2(GT)",
    "PT08.S4(NO2)",
    "PT08.S5(O3)",
    "T",
    "RH",
    "AH",
]

HEALTH_ROUTE = os.environ["AIP_HEALTH_ROUTE"]
PREDICT_ROUTE = os.environ["AIP_PREDICT_ROUTE"]


def load_artifacts(storage_uri: str) -> tuple[object, dict[str, dict[str, float]]]:
    bucket_name, _, prefix = storage_uri[len("gs://") :].partition("/")
    prefix = prefix.strip("/")
    client = storage.Client()
    bucket = client.bucket(bucket_name)
    names = [b.name for b in client.list_blobs(bucket_name, prefix=f"{prefix}/" if prefix else None)]
    models = sorted(n for n in names if n.rsplit("/", 1)[-1].startswith("model_") and n.endswith(".pkl"))
    if not models:
        raise RuntimeError(f"no model_*.pkl under {storage_uri}")
    stats_name = f"{prefix}/normalization_stats.json" if prefix else "normalization_stats.json"
    stats = json.loads(bucket.blob(stats_name).download_as_text())
    model = pickle.loads(bucket.blob(models[-1]).download_as_bytes())
    return model, stats


model, stats = load_artifacts(os.environ["AIP_STORAGE_URI"])
app = Flask(__name__)


@app.route(HEALTH_ROUTE, methods=["GET"])
def health():
    return jsonify({"status": "healthy"})


@app.route(PREDICT_ROUTE, methods=["POST"])
def predict():
    body = request.get_json(force=True, silent=True) or {}
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        return jsonify({"error": "body must be {'instances': [{feature: value, ...}]}"}), 400
    rows = []
    for instance in instances:
        if not isinstance(instance, dict):
            return jsonify({"error": "each instance must be an object of the 12 features"}), 400
        row = []
        for name in FEATURES:
            mean, std = stats["mean"].get(name, 0.0), stats["std"].get(name, 1.0) or 1.0
            row.append((float(instance.get(name, mean)) - mean) / std)
        rows.append(row)
    values = model.predict(np.asarray(rows, dtype=float))  # type: ignore[attr-defined]
    return jsonify({"predictions": [{"result": float(v)} for v in values]})


if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "0.0.0.0"), port=int(os.environ.get("AIP_HTTP_PORT", "8080")))
