"""Train (custom container), register, deploy and query the air-quality model with the Vertex SDK.

The same script drives Vertex AI and loopml; only configuration differs:

    # loopml (after `loopml images build` of training/ and serving/, see examples/README.md)
    LOOPML_URL=http://127.0.0.1:8080 STORAGE_EMULATOR_HOST=http://127.0.0.1:8080 PROJECT_ID=demo python run.py
    # Vertex AI
    PROJECT_ID=my-project REGION=us-east1 BUCKET=my-bucket TRAIN_IMAGE=... SERVE_IMAGE=... python run.py

Environment: PROJECT_ID, REGION (us-east1), BUCKET (<project>-air-quality), TRAIN_IMAGE
(air-quality/trainer:1), SERVE_IMAGE (air-quality/server:1).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from google.cloud import aiplatform, storage

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "data" / "AirQualityUCI_2004-04.csv"
SAMPLE = {
    "PT08.S1(CO)": 1360.0,
    "NMHC(GT)": 150.0,
    "C6H6(GT)": 11.9,
    "PT08.S2(NMHC)": 1046.0,
    "NOx(GT)": 166.0,
    "PT08.S3(NOx)": 1056.0,
    "NO2(GT)": 113.0,
    "PT08.S4(NO2)": 1692.0,
    "PT08.S5(O3)": 1268.0,
    "T": 13.6,
    "RH": 48.9,
    "AH": 0.7578,
}


def init(project: str, region: str, staging_bucket: str) -> None:
    """Portable init: REST transport always; a local endpoint and anonymous credentials only for loopml."""
    local = os.environ.get("LOOPML_URL")
    kwargs: dict[str, object] = {
        "project": project,
        "location": region,
        "api_transport": "rest",
        "staging_bucket": staging_bucket,
    }
    if local:
        from google.auth.credentials import AnonymousCredentials

        kwargs.update(api_endpoint=local, credentials=AnonymousCredentials())
    aiplatform.init(**kwargs)  # type: ignore[arg-type]


def upload_fixture(project: str, bucket_name: str) -> str:
    client = storage.Client(project=project)
    bucket = client.lookup_bucket(bucket_name) or client.create_bucket(bucket_name)
    blob = bucket.blob(f"data/{FIXTURE.name}")
    blob.upload_from_filename(str(FIXTURE))
    return f"gs://{bucket_name}/{blob.name}"


def main() -> dict[str, object]:
    project = os.environ["PROJECT_ID"]
    region = os.environ.get("REGION", "us-east1")
    bucket = os.environ.get("BUCKET", f"{project}-air-quality")
    train_image = os.environ.get("TRAIN_IMAGE", "air-quality/trainer:1")
    serve_image = os.environ.get("SERVE_IMAGE", "air-quality/server:1")
    init(project, region, f"gs://{bucket}")
    data_uri = upload_fixture(project, bucket)

    serving_env = {"HOST": "127.0.0.1"} if os.environ.get("LOOPML_URL") else {}
    job = aiplatform.CustomContainerTrainingJob(
        display_name="timeseriesmlopse2e",
        container_uri=train_image,
        model_serving_container_image_uri=serve_image,
        model_serving_container_environment_variables=serving_env,
    )
    model = job.run(
        model_display_name="air-quality-co",
        base_output_dir=f"gs://{bucket}/training",
        args=["--data-uri", data_uri],
        replica_count=1,
    )
    endpoint = model.deploy(sync=True)
    response = endpoint.predict(instances=[SAMPLE])
    result = {
        "pipeline": job.resource_name,
        "model": model.resource_name,
        "endpoint": endpoint.resource_name,
        "predictions": [dict(p) for p in response.predictions],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
