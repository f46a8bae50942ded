"""Job spec normalisation and validation, and the job environment contract (pure)."""

from __future__ import annotations

import pytest

from loopml.errors import InvalidArgument
from loopml.training.contract import data_env, job_env, server_url
from loopml.training.spec import (
    normalise,
    parse_duration,
    parse_job_spec,
    parse_replica_count,
    pipeline_state,
)

SDK_INPUTS = {
    "worker_pool_specs": [
        {
            "machine_spec": {"machine_type": "n1-standard-4"},
            "replica_count": 1.0,
            "containerSpec": {"imageUri": "local/trainer:1", "args": ["--epochs", "3"]},
        }
    ],
    "base_output_directory": {"output_uri_prefix": "gs://bucket1/run1/"},
    "scheduling": {"timeout": "120s", "restart_job_on_worker_restart": False},
}


def test_snake_and_camel_spellings_give_the_same_spec() -> None:
    camel = {
        "workerPoolSpecs": [
            {
                "machineSpec": {"machineType": "n1-standard-4"},
                "replicaCount": "1",
                "containerSpec": {"imageUri": "local/trainer:1", "args": ["--epochs", "3"]},
            }
        ],
        "baseOutputDirectory": {"outputUriPrefix": "gs://bucket1/run1/"},
        "scheduling": {"timeout": "120s"},
    }
    a, b = parse_job_spec(normalise(SDK_INPUTS)), parse_job_spec(normalise(camel))
    assert a == b
    assert a.chief.image_uri == "local/trainer:1"
    assert a.chief.args == ["--epochs", "3"]
    assert a.base_output_dir == "gs://bucket1/run1"
    assert a.timeout_s == 120.0


def test_normalise_leaves_user_maps_alone() -> None:
    out = normalise({"model_to_upload": {"labels": {"my_label": "x"}, "container_spec": {"image_uri": "i"}}})
    assert out == {"modelToUpload": {"labels": {"my_label": "x"}, "containerSpec": {"imageUri": "i"}}}


def test_python_package_spec_snake_case() -> None:
    spec = parse_job_spec(
        normalise(
            {
                "worker_pool_specs": [
                    {
                        "replica_count": 1,
                        "python_package_spec": {
                            "executor_image_uri": "us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-0:latest",
                            "package_uris": ["gs://bucket1/code/trainer-0.1.tar.gz"],
                            "python_module": "trainer.task",
                            "env": [{"name": "A", "value": 1}],
                        },
                    }
                ]
            }
        )
    )
    assert spec.chief.is_python_package
    assert spec.chief.python_module == "trainer.task"
    assert spec.chief.env == {"A": "1"}


@pytest.mark.parametrize(("value", "expected"), [(1, 1), (2.0, 2), ("1", 1), (" 3 ", 3), ("1.0", 1)])
def test_replica_count_spellings(value: object, expected: int) -> None:
    assert parse_replica_count(value, "p") == expected


@pytest.mark.parametrize("value", [1.5, "one", -1, True, None, [1]])
def test_replica_count_rejects(value: object) -> None:
    with pytest.raises(InvalidArgument, match="replicaCount"):
        parse_replica_count(value, "p")


@pytest.mark.parametrize(("value", "expected"), [("3600s", 3600.0), ("1.5s", 1.5), (30, 30.0)])
def test_durations(value: object, expected: float) -> None:
    assert parse_duration(value, "t") == expected


@pytest.mark.parametrize("value", ["1h", "s", "-3s", 0, "0s"])
def test_durations_reject(value: object) -> None:
    with pytest.raises(InvalidArgument):
        parse_duration(value, "t")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "workerPoolSpecs"),
        ({"workerPoolSpecs": [{}]}, "chief pool"),
        ({"workerPoolSpecs": [{"replicaCount": 1}]}, "exactly one of"),
        (
            {"workerPoolSpecs": [{"containerSpec": {"imageUri": "i"}, "pythonPackageSpec": {"x": 1}}]},
            "exactly one",
        ),
        ({"workerPoolSpecs": [{"containerSpec": {}}]}, "exactly one of"),
        ({"workerPoolSpecs": [{"containerSpec": {"command": ["x"]}}]}, "imageUri"),
        ({"workerPoolSpecs": [{"replicaCount": 0, "containerSpec": {"imageUri": "i"}}]}, "at least 1"),
        (
            {"workerPoolSpecs": [{"containerSpec": {"imageUri": "i", "env": [{"name": "1BAD"}]}}]},
            "valid variable",
        ),
        (
            {
                "workerPoolSpecs": [{"containerSpec": {"imageUri": "i"}}],
                "baseOutputDirectory": {"outputUriPrefix": "/tmp/x"},
            },
            "gs://",
        ),
        (
            {"workerPoolSpecs": [{"pythonPackageSpec": {"executorImageUri": "e", "pythonModule": "m"}}]},
            "packageUris",
        ),
    ],
)
def test_invalid_specs_name_the_problem(spec: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_job_spec(spec)


def test_pipeline_state_names() -> None:
    assert pipeline_state("JOB_STATE_SUCCEEDED") == "PIPELINE_STATE_SUCCEEDED"


def test_data_env_warehouse_table_and_uris() -> None:
    env = data_env({"warehouseTable": {"training": "bq://p.d.t", "test": "p.d.t_test"}})
    assert env == {
        "AIP_DATA_FORMAT": "bigquery",
        "AIP_TRAINING_DATA_URI": "bq://p.d.t",
        "AIP_TEST_DATA_URI": "bq://p.d.t_test",
    }
    env = data_env({"dataUris": {"format": "csv", "training": "gs://b1/train-*.csv"}})
    assert env == {"AIP_DATA_FORMAT": "csv", "AIP_TRAINING_DATA_URI": "gs://b1/train-*.csv"}
    assert data_env({"datasetId": "123"}) == {}  # a managed dataset's variables come at job start
    with pytest.raises(InvalidArgument, match="give only one"):
        data_env({"datasetId": "123", "warehouseTable": "bq://p.d.t"})
    with pytest.raises(InvalidArgument, match=r"project\.dataset\.table"):
        data_env({"warehouseTable": "bq://only.two"})


def test_job_env_contract_and_precedence() -> None:
    env = job_env(
        base_env={"PATH": "/usr/bin", "HOME": "/root", "SECRET": "x", "NO_GCE_CHECK": "true"},
        bin_dirs=["/venv/bin"],
        image_env={"AIP_MODEL_DIR": "image-value", "FROM_IMAGE": "1"},
        user_env={"AIP_STORAGE_URI": "gs://b1/s", "FROM_IMAGE": "2"},
        project="p1",
        location="us-central1",
        job_id="42",
        base_output_dir="gs://b1/out",
        data={"AIP_DATA_FORMAT": "bigquery"},
        url=server_url("0.0.0.0", 9000),
    )
    assert env["AIP_MODEL_DIR"] == "gs://b1/out/model/"
    assert env["AIP_CHECKPOINT_DIR"] == "gs://b1/out/checkpoints/"
    assert env["AIP_TENSORBOARD_LOG_DIR"] == "gs://b1/out/logs/"
    assert env["AIP_STORAGE_URI"] == "gs://b1/s"
    assert env["FROM_IMAGE"] == "2"
    assert env["CLOUD_ML_JOB_ID"] == "42" and env["CLOUD_ML_PROJECT_ID"] == "p1"
    assert env["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:9000"
    assert env["BIGQUERY_EMULATOR_HOST"] == "http://127.0.0.1:9000"
    assert env["GCE_METADATA_HOST"] == "127.0.0.1:9000"
    assert env["PATH"].startswith("/venv/bin")
    assert "SECRET" not in env and "NO_GCE_CHECK" not in env
    assert env["AIP_DATA_FORMAT"] == "bigquery"
