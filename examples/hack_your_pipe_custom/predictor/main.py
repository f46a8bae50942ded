"""Anomaly predictor (W1 "hack your pipe", custom variant), a FastAPI custom serving container.

At import it loads `${AIP_STORAGE_URI}/model_dir/model.joblib` through google-cloud-storage (and
fails loudly if AIP_STORAGE_URI is unset, as on Vertex). Routes: `GET /health_check` and
`POST $AIP_PREDICT_ROUTE` (default `/predict`), mapping `{"instances": [{tax, shipping, value}]}`
to `{"predictions": [bool, ...]}`.
"""

from __future__ import annotations

import io
import os

import joblib
import pandas as pd
from fastapi import FastAPI, HTTPException, Request
from google.cloud import storage

FEATURES = ["tax", "shipping", "value"]


def load_model(storage_uri: str):
    if not storage_uri.startswith("gs://"):
        raise RuntimeError(f"AIP_STORAGE_URI must be a gs:// URI, got {storage_uri!r}")
    bucket, _, prefix = storage_uri[len("gs://") :].partition("/")
    prefix = prefix.strip("/")
    blob_name = f"{prefix}/model_dir/model.joblib" if prefix else "model_dir/model.joblib"
    data = storage.Client().bucket(bucket).blob(blob_name).download_as_bytes()
    return joblib.load(io.BytesIO(data))


model = load_model(os.environ["AIP_STORAGE_URI"])
app = FastAPI()


@app.get("/health_check")
def health_check() -> dict[str, str]:
    return {"status": "healthy"}


@app.post(os.environ.get("AIP_PREDICT_ROUTE", "/predict"))
async def predict(request: Request) -> dict[str, list[bool]]:
    body = await request.json()
    instances = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(instances, list) or not instances:
        raise HTTPException(
            status_code=400, detail="body must be {'instances': [{tax, shipping, value}, ...]}"
        )
    try:
        frame = pd.DataFrame([{f: float(row[f]) for f in FEATURES} for row in instances], columns=FEATURES)
    except (KeyError, TypeError, ValueError) as exc:
        raise HTTPException(status_code=400, detail=f"each instance needs numeric {FEATURES}: {exc}") from exc
    return {"predictions": [bool(p) for p in model.predict(frame)]}
