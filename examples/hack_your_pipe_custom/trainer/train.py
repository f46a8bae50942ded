"""Anomaly classifier trainer (W1 "hack your pipe", custom variant), written for loopml's examples.

Reads the warehouse table `anomaly_data(anomaly BOOL, tax, shipping, value FLOAT)` with
google-cloud-bigquery, fits a DecisionTreeClassifier on a 75/25 split and writes
`$AIP_STORAGE_URI/model_dir/model.joblib` with google-cloud-storage.

The same file runs on Vertex AI and on loopml: only the environment differs. On loopml the job
gets BIGQUERY_EMULATOR_HOST, STORAGE_EMULATOR_HOST and GCE metadata emulation, so the default
clients below talk to the local server.
"""

from __future__ import annotations

import io
import os
import sys

import joblib
from google.cloud import bigquery, storage
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier

FEATURES = ["tax", "shipping", "value"]


def split_gs_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://"):
        raise SystemExit(f"AIP_STORAGE_URI must be a gs:// URI, got {uri!r}")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    return bucket, prefix.strip("/")


def main() -> int:
    project = os.environ.get("PROJECT_ID") or os.environ["GOOGLE_CLOUD_PROJECT"]
    source = os.environ.get("BQ_SOURCE", f"{project}.ecommerce_sink.anomaly_data")
    storage_uri = os.environ["AIP_STORAGE_URI"]

    bq = bigquery.Client(project=project)
    frame = bq.list_rows(source).to_dataframe(create_bqstorage_client=False)
    print(f"read {len(frame)} rows from {source}", flush=True)
    if frame.empty:
        print("no training data", file=sys.stderr)
        return 1

    x, y = frame[FEATURES].astype(float), frame["anomaly"].astype(bool)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25)
    model = DecisionTreeClassifier().fit(x_train, y_train)
    print(f"test accuracy: {model.score(x_test, y_test):.4f}", flush=True)

    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    bucket, prefix = split_gs_uri(storage_uri)
    blob_name = f"{prefix}/model_dir/model.joblib" if prefix else "model_dir/model.joblib"
    storage.Client(project=project).bucket(bucket).blob(blob_name).upload_from_string(buffer.getvalue())
    print(f"wrote gs://{bucket}/{blob_name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
