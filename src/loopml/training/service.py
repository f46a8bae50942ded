"""TrainingService: CustomJobs and TrainingPipelines, stored and handed to the job runner.

`create_custom_job` stores a PENDING job and submits it; the runner does the rest.
`create_training_pipeline` stores the pipeline and a backing CustomJob; when that job succeeds
the pipeline uploads its model through the registry (`modelToUpload`, with `AIP_MODEL_DIR` as
the artifact URI when none is given) and only then becomes SUCCEEDED. A pipeline with
`inputDataConfig.datasetId` is checked against the managed dataset when it is created
(`services["datasets"].plan`), and its job writes the split when it starts (`_prepare_data`, the
runner's `prepare_data` hook); the uploaded model's lineage names the dataset.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TextIO

from loopml.errors import FailedPrecondition, InvalidArgument, LoopmlError, NotFound
from loopml.metadata import Database
from loopml.metadata.jobs_tables import TrainingJobRow
from loopml.refs import check_parent, new_numeric_id, now, parent_name
from loopml.training.contract import data_env
from loopml.training.runner import JobRunner
from loopml.training.runtime import RuntimeResolver, check_package_uris
from loopml.training.spec import (
    CUSTOM_TASK_DEFINITION,
    TERMINAL_STATES,
    normalise,
    parse_job_spec,
)
from loopml.training.store import CUSTOM_JOBS, TRAINING_PIPELINES, job_name, to_json

log = logging.getLogger(__name__)


class TrainingService:
    def __init__(
        self,
        db: Database,
        runner: JobRunner,
        resolver: RuntimeResolver,
        *,
        services: dict[str, Any] | None = None,
        logs_dir: Path,
    ) -> None:
        self.db = db
        self.runner = runner
        self.resolver = resolver
        self.store = runner.store
        self.services = services if services is not None else {}
        self.logs_dir = logs_dir
        runner.on_started.append(self._job_started)
        runner.on_finished.append(self._job_finished)
        runner.prepare_data = self._prepare_data

    # -- create ----------------------------------------------------------------------------
    def _validate(self, job_spec: dict[str, Any]) -> None:
        spec = parse_job_spec(job_spec)
        for pool in spec.pools:
            if pool.is_python_package:
                check_package_uris(self.resolver.store, pool.package_uris)
            else:
                self.resolver.check_image(pool)
        if spec.base_output_dir:
            self.resolver.store.resolve(spec.base_output_dir)  # must map inside a bucket

    def _new_row(
        self,
        project: str,
        location: str,
        collection: str,
        display_name: str,
        spec: dict[str, Any],
        labels: dict[str, Any],
    ) -> TrainingJobRow:
        job_id = new_numeric_id(18)
        return TrainingJobRow(
            project=project,
            location=location,
            collection=collection,
            job_id=job_id,
            display_name=display_name,
            state="JOB_STATE_PENDING",
            spec=spec,
            labels=labels,
            outputs={},
            cancel_requested=0,
            log_path=str(self.logs_dir / f"{job_id}.log") if collection == CUSTOM_JOBS else "",
            create_time=now(),
            update_time=now(),
        )

    @staticmethod
    def _labels(body: dict[str, Any]) -> dict[str, Any]:
        labels = body.get("labels") or {}
        if not isinstance(labels, dict):
            raise InvalidArgument("labels must be a map of strings.")
        return {str(k): str(v) for k, v in labels.items()}

    def create_custom_job(self, project: str, location: str, body: dict[str, Any]) -> dict[str, Any]:
        check_parent(project, location)
        if not isinstance(body, dict):
            raise InvalidArgument("The request body must be a CustomJob object.")
        display_name = body.get("displayName") or body.get("display_name")
        if not isinstance(display_name, str) or not display_name.strip():
            raise InvalidArgument("CustomJob.displayName is required.")
        job_spec = normalise(body.get("jobSpec") or body.get("job_spec") or {})
        self._validate(job_spec)
        row = self._new_row(
            project,
            location,
            CUSTOM_JOBS,
            display_name,
            {"request": {}, "jobSpec": job_spec},
            self._labels(body),
        )
        with self.db.session() as s:
            s.add(row)
        self.runner.submit(row.pk)
        return to_json(row)

    def create_training_pipeline(self, project: str, location: str, body: dict[str, Any]) -> dict[str, Any]:
        check_parent(project, location)
        if not isinstance(body, dict):
            raise InvalidArgument("The request body must be a TrainingPipeline object.")
        request = normalise(
            {k: v for k, v in body.items() if k not in ("trainingTaskInputs", "training_task_inputs")}
        )
        raw_inputs = body.get("trainingTaskInputs", body.get("training_task_inputs")) or {}
        request["trainingTaskInputs"] = raw_inputs  # echoed back as sent: the SDK reads snake keys
        display_name = request.get("displayName")
        if not isinstance(display_name, str) or not display_name.strip():
            raise InvalidArgument("TrainingPipeline.displayName is required.")
        definition = request.get("trainingTaskDefinition") or CUSTOM_TASK_DEFINITION
        if not str(definition).endswith("custom_task_1.0.0.yaml"):
            raise InvalidArgument(
                f"trainingTaskDefinition {definition!r} is not supported: loopml runs custom training "
                f"({CUSTOM_TASK_DEFINITION}) only, not AutoML."
            )
        request["trainingTaskDefinition"] = definition
        job_spec = normalise(raw_inputs)
        self._validate(job_spec)
        model = request.get("modelToUpload")
        if model is not None and not isinstance(model, dict):
            raise InvalidArgument("modelToUpload must be a Model object.")
        if model and not model.get("artifactUri") and not parse_job_spec(job_spec).base_output_dir:
            raise InvalidArgument(
                "modelToUpload has no artifactUri and the job has no baseOutputDirectory to take AIP_MODEL_DIR from."
            )
        input_data = request.get("inputDataConfig")
        env = data_env(input_data)
        plan = self._dataset_plan(project, location, input_data)
        labels = self._labels(request)
        pipeline = self._new_row(
            project, location, TRAINING_PIPELINES, display_name, {"request": request}, labels
        )
        job = self._new_row(
            project,
            location,
            CUSTOM_JOBS,
            f"{display_name}-custom-job",
            {
                "request": {},
                "jobSpec": job_spec,
                "dataEnv": env,
                "pipeline": pipeline.job_id,
                **({"datasetPlan": plan} if plan else {}),
            },
            labels,
        )
        pipeline.backing_job = job.job_id
        with self.db.session() as s:
            s.add(pipeline)
            s.add(job)
        self.runner.submit(job.pk)
        return to_json(pipeline)

    # -- managed datasets ------------------------------------------------------------------
    def _datasets(self) -> Any:
        datasets = self.services.get("datasets")
        if datasets is None:
            raise FailedPrecondition("Managed datasets are not configured on this server.")
        return datasets

    def _dataset_plan(self, project: str, location: str, input_data: Any) -> dict[str, Any] | None:
        """The validated use of `inputDataConfig.datasetId` (404 unknown dataset, 400 bad split)."""
        if not isinstance(input_data, dict) or not input_data.get("datasetId"):
            return None
        plan: dict[str, Any] = self._datasets().plan(project, location, input_data)
        return plan

    def _prepare_data(self, pk: int, plan: dict[str, Any], logf: TextIO) -> dict[str, str]:
        """At job start: write the dataset's split; its AIP_* variables for the job."""
        logf.write(f"[loopml] materialising the split of {plan['dataset']}\n")
        result = self._datasets().materialise(plan, now())
        counts = ", ".join(f"{k} {v}" for k, v in result["counts"].items())
        logf.write(f"[loopml] {result['sourceRows']} source rows: {counts}\n")
        for key, value in sorted(result["env"].items()):
            logf.write(f"[loopml] {key}={value}\n")
        with self.db.session() as s:
            row = s.get(TrainingJobRow, pk)
            if row is not None:
                row.outputs = {
                    **(row.outputs or {}),
                    "datasetSplit": {
                        "dataset": plan["dataset"],
                        "format": result["env"]["AIP_DATA_FORMAT"],
                        "uris": result["uris"],
                        "counts": result["counts"],
                    },
                }
        return dict(result["env"])

    # -- read ------------------------------------------------------------------------------
    def get(self, project: str, location: str, collection: str, job_id: str) -> dict[str, Any]:
        return self.store.get(project, location, collection, job_id)

    def list(self, project: str, location: str, collection: str, **kw: Any) -> dict[str, Any]:
        check_parent(project, location)
        return self.store.list(project, location, collection, **kw)

    def log_path(self, project: str, location: str, collection: str, job_id: str) -> tuple[Path, str]:
        """The log file of a job (a pipeline's is its backing job's) and the job's resource name."""
        with self.db.session() as s:
            row = self.store.get_row(s, project, location, collection, job_id)
            if collection == TRAINING_PIPELINES:
                if not row.backing_job:
                    raise NotFound(f"{job_name(row)} has no backing job yet.")
                row = self.store.get_row(s, project, location, CUSTOM_JOBS, row.backing_job)
            return Path(row.log_path), job_name(row)

    def state(self, project: str, location: str, collection: str, job_id: str) -> str:
        with self.db.session() as s:
            return self.store.get_row(s, project, location, collection, job_id).state

    # -- cancel / delete -------------------------------------------------------------------
    def cancel(self, project: str, location: str, collection: str, job_id: str) -> None:
        with self.db.session() as s:
            row = self.store.get_row(s, project, location, collection, job_id)
            if row.state in TERMINAL_STATES:
                raise FailedPrecondition(f"{job_name(row)} is already {row.state}; nothing to cancel.")
            target = row
            if collection == TRAINING_PIPELINES and row.backing_job:
                target = self.store.get_row(s, project, location, CUSTOM_JOBS, row.backing_job)
            target.cancel_requested = 1
            if target.state not in TERMINAL_STATES:
                target.state = "JOB_STATE_CANCELLING"
            target.update_time = now()
            target_pk = target.pk
        if not self.runner.cancel(target_pk):
            moved = self.store.finish(
                target_pk, "JOB_STATE_CANCELLED", {"code": 1, "message": "The job was cancelled."}
            )
            if moved is not None:
                self._job_finished(moved)

    def delete(self, project: str, location: str, collection: str, job_id: str) -> str:
        with self.db.session() as s:
            row = self.store.get_row(s, project, location, collection, job_id)
            if row.state not in TERMINAL_STATES:
                raise FailedPrecondition(
                    f"{job_name(row)} is {row.state}; cancel it and wait for it to end before deleting it."
                )
            name = job_name(row)
            backing = row.backing_job if collection == TRAINING_PIPELINES else None
            s.delete(row)
            if backing:
                child = (
                    s.query(TrainingJobRow)
                    .filter_by(project=project, location=location, collection=CUSTOM_JOBS, job_id=backing)
                    .one_or_none()
                )
                if child is not None and child.state in TERMINAL_STATES:
                    s.delete(child)
        return name

    # -- pipeline bookkeeping (runner hooks) -----------------------------------------------
    def _pipeline_of(self, job: TrainingJobRow) -> str | None:
        value = job.spec.get("pipeline")
        return str(value) if value else None

    def _job_started(self, job: TrainingJobRow) -> None:
        pipeline_id = self._pipeline_of(job)
        if pipeline_id is None:
            return
        with self.db.session() as s:
            row = self.store.get_row(s, job.project, job.location, TRAINING_PIPELINES, pipeline_id)
            if row.state not in TERMINAL_STATES:
                row.state = "JOB_STATE_RUNNING"
                row.start_time = row.update_time = now()

    def _job_finished(self, job: TrainingJobRow) -> None:
        pipeline_id = self._pipeline_of(job)
        if pipeline_id is None:
            return
        with self.db.session() as s:
            pipeline = self.store.get_row(s, job.project, job.location, TRAINING_PIPELINES, pipeline_id)
            pk, request = pipeline.pk, dict(pipeline.spec.get("request") or {})
        if job.state != "JOB_STATE_SUCCEEDED":
            self.store.finish(pk, job.state, job.error)
            return
        model = request.get("modelToUpload")
        if not model:
            self.store.finish(pk, "JOB_STATE_SUCCEEDED")
            return
        try:
            uploaded = self._upload(job, pipeline_id, request, dict(model))
        except LoopmlError as exc:
            self.store.finish(
                pk,
                "JOB_STATE_FAILED",
                {"code": exc.grpc_code, "message": f"Model upload failed: {exc.message}"},
            )
            return
        except Exception as exc:
            log.exception("model upload of training pipeline %s failed", pipeline_id)
            self.store.finish(pk, "JOB_STATE_FAILED", {"code": 13, "message": f"Model upload failed: {exc}"})
            return
        self.store.update(pk, outputs={"modelToUpload": uploaded})
        self.store.finish(pk, "JOB_STATE_SUCCEEDED")

    @staticmethod
    def _lineage(job: TrainingJobRow, pipeline_name: str) -> dict[str, Any]:
        lineage: dict[str, Any] = {"kind": "training_pipeline", "job": pipeline_name}
        split = (job.outputs or {}).get("datasetSplit")
        if split:
            lineage["dataset"] = split["dataset"]
            lineage["datasetSplit"] = {k: split[k] for k in ("format", "uris", "counts")}
        return lineage

    def _upload(
        self, job: TrainingJobRow, pipeline_id: str, request: dict[str, Any], model: dict[str, Any]
    ) -> dict[str, Any]:
        registry = self.services.get("registry")
        if registry is None:
            raise FailedPrecondition("No model registry is configured on this server.")
        if not model.get("artifactUri"):
            base = parse_job_spec(job.spec.get("jobSpec", {})).base_output_dir
            model["artifactUri"] = f"{base}/model/"
        if not model.get("displayName"):
            model["displayName"] = request.get("displayName", pipeline_id)
        name = f"{parent_name(job.project, job.location)}/trainingPipelines/{pipeline_id}"
        result = registry.upload_model(
            job.project,
            job.location,
            model,
            model_id=request.get("modelId") or None,
            parent_model=request.get("parentModel") or None,
            lineage=self._lineage(job, name),
        )
        model["name"] = result["model"]
        model["versionId"] = str(result.get("modelVersionId", "1"))
        return model
