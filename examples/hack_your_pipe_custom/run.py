"""Train, register, deploy and query the custom anomaly model through the Vertex AI SDK.

The same script drives Vertex AI and loopml; only configuration differs:

    # loopml (after `loopml images build` of trainer/ and predictor/, see examples/README.md)
    LOOPML_URL=http://127.0.0.1:8080 PROJECT_ID=demo python run.py
    # Vertex AI
    PROJECT_ID=my-project REGION=europe-west1 TRAIN_IMAGE=europe-west1-docker.pkg.dev/... python run.py

Environment: PROJECT_ID, REGION (us-central1), TRAIN_IMAGE (hyp/trainer:1), PREDICT_IMAGE
(hyp/predictor:1), AIP_STORAGE_URI (gs://<project>-ai-bucket/vtx-artifacts), BQ_SOURCE
(<project>.ecommerce_sink.anomaly_data).
"""

from __future__ import annotations

import json
import os

from google.cloud import aiplatform


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


def main() -> dict[str, object]:
    project = os.environ["PROJECT_ID"]
    region = os.environ.get("REGION", "us-central1")
    train_image = os.environ.get("TRAIN_IMAGE", "hyp/trainer:1")
    predict_image = os.environ.get("PREDICT_IMAGE", "hyp/predictor:1")
    storage_uri = os.environ.get("AIP_STORAGE_URI", f"gs://{project}-ai-bucket/vtx-artifacts")
    bq_source = os.environ.get("BQ_SOURCE", f"{project}.ecommerce_sink.anomaly_data")
    init(project, region, f"gs://{project}-ai-bucket")

    job = aiplatform.CustomJob(
        display_name="anomaly-detection-custom-train",
        worker_pool_specs=[
            {
                "machine_spec": {"machine_type": "n1-standard-4"},
                "replica_count": 1,
                "container_spec": {
                    "image_uri": train_image,
                    "env": [
                        {"name": "AIP_STORAGE_URI", "value": storage_uri},
                        {"name": "BQ_SOURCE", "value": bq_source},
                        {"name": "PROJECT_ID", "value": project},
                    ],
                },
            }
        ],
    )
    job.run()

    serving_env = {}
    if os.environ.get("LOOPML_URL"):
        serving_env["UVICORN_HOST"] = "127.0.0.1"  # loopml runs the container on this machine
    model = aiplatform.Model.upload(
        display_name="anomaly-detection-custom",
        artifact_uri=storage_uri,
        serving_container_image_uri=predict_image,
        serving_container_predict_route="/predict",
        serving_container_health_route="/health_check",
        serving_container_ports=[8080],
        serving_container_environment_variables=serving_env,
    )
    endpoint = model.deploy(machine_type="n1-standard-2", min_replica_count=1, max_replica_count=1)
    normal = {"tax": 4.9, "shipping": 5.99, "value": 35.43}
    anomaly = {"tax": 4.9, "shipping": 5.99, "value": 1000000.1}
    response = endpoint.predict(instances=[normal, anomaly])
    result = {
        "job": job.resource_name,
        "model": model.resource_name,
        "endpoint": endpoint.resource_name,
        "predictions": list(response.predictions),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
