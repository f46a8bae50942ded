"""The minimal peer: a single-process FastAPI app calling `model.predict` (run with uvicorn)."""

from __future__ import annotations

import os

import joblib
import numpy as np
from fastapi import FastAPI

app = FastAPI()
model = joblib.load(os.environ["MODEL_PATH"])


@app.post("/predict")
async def predict(body: dict) -> dict:  # type: ignore[type-arg]
    return {"predictions": model.predict(np.asarray(body["instances"], dtype=float)).tolist()}
