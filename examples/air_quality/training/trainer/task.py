"""Train a RandomForestRegressor for CO(GT) on the UCI air-quality readings.

`python -m trainer.task [--data-uri gs://.../AirQualityUCI.csv] [--model-dir gs://...]`

- Reads the UCI CSV (`;` separators, decimal commas); `-200` sentinels are kept as values.
- Statistics (mean, std with ddof=1) over every numeric column, target included, are saved as
  `normalization_stats.json` = {"mean": {...}, "std": {...}}.
- 80/20 chronological split; features and target are z-scored; the model is
  `RandomForestRegressor(n_estimators=100, random_state=42)`.
- Writes `model_<YYYYmmdd_HHMMSS>.pkl` (UTC) and the stats to `--model-dir` (default `$AIP_MODEL_DIR`)
  through google-cloud-storage; a plain directory path also works.

The data URI defaults to `$AIP_TRAINING_DATA_URI`. Nothing here is loopml-specific: on loopml the
job's STORAGE_EMULATOR_HOST and GCE metadata emulation make the same clients reach the local store.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor

TARGET = "CO(GT)"
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


def _split(uri: str) -> tuple[str, str]:
    bucket, _, name = uri[len("gs://") :].partition("/")
    return bucket, name


def read_bytes(uri: str) -> bytes:
    if uri.startswith("gs://"):
        from google.cloud import storage

        bucket, name = _split(uri)
        return storage.Client().bucket(bucket).blob(name).download_as_bytes()
    return Path(uri).read_bytes()


def write_bytes(directory: str, name: str, data: bytes) -> str:
    if directory.startswith("gs://"):
        from google.cloud import storage

        bucket, prefix = _split(directory)
        blob = f"{prefix.rstrip('/')}/{name}" if prefix.strip("/") else name
        storage.Client().bucket(bucket).blob(blob).upload_from_string(data)
        return f"gs://{bucket}/{blob}"
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def load_frame(data: bytes) -> pd.DataFrame:
    frame = pd.read_csv(io.BytesIO(data), sep=";", decimal=",")
    frame = frame.loc[:, [c for c in frame.columns if not str(c).startswith("Unnamed")]]
    frame = frame.dropna(how="all")
    frame["timestamp"] = pd.to_datetime(frame["Date"] + " " + frame["Time"], format="%d/%m/%Y %H.%M.%S")
    return frame.sort_values("timestamp").reset_index(drop=True)


def normalisation_stats(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    numeric = frame[[*FEATURES, TARGET]].astype(float)
    return {
        "mean": {c: float(numeric[c].mean()) for c in numeric.columns},
        "std": {c: float(numeric[c].std(ddof=1)) for c in numeric.columns},
    }


def zscore(frame: pd.DataFrame, stats: dict[str, dict[str, float]], columns: list[str]) -> pd.DataFrame:
    out = frame[columns].astype(float).copy()
    for c in columns:
        std = stats["std"].get(c, 1.0) or 1.0
        out[c] = (out[c] - stats["mean"].get(c, 0.0)) / std
    return out


def train(frame: pd.DataFrame) -> tuple[RandomForestRegressor, dict[str, dict[str, float]], float]:
    stats = normalisation_stats(frame)
    cut = int(len(frame) * 0.8)
    train_part, test_part = frame.iloc[:cut], frame.iloc[cut:]
    x_train, y_train = zscore(train_part, stats, FEATURES), zscore(train_part, stats, [TARGET])[TARGET]
    x_test, y_test = zscore(test_part, stats, FEATURES), zscore(test_part, stats, [TARGET])[TARGET]
    model = RandomForestRegressor(n_estimators=100, random_state=42)
    model.fit(x_train.to_numpy(), y_train.to_numpy())
    mse = float(np.mean((model.predict(x_test.to_numpy()) - y_test.to_numpy()) ** 2)) if len(x_test) else 0.0
    return model, stats, mse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-uri", default=os.environ.get("AIP_TRAINING_DATA_URI"))
    parser.add_argument("--model-dir", default=os.environ.get("AIP_MODEL_DIR"))
    args = parser.parse_args(argv)
    if not args.data_uri or not args.model_dir:
        parser.error("--data-uri (or AIP_TRAINING_DATA_URI) and --model-dir (or AIP_MODEL_DIR) are required")
    frame = load_frame(read_bytes(args.data_uri))
    print(f"read {len(frame)} rows, {frame['timestamp'].min()} .. {frame['timestamp'].max()}", flush=True)
    model, stats, mse = train(frame)
    print(f"test MSE (normalised CO): {mse:.4f}", flush=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
    print("wrote", write_bytes(args.model_dir, "normalization_stats.json", json.dumps(stats).encode()))
    print("wrote", write_bytes(args.model_dir, f"model_{stamp}.pkl", pickle.dumps(model)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
