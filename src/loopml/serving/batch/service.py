"""BatchPredictionJobs: create, get, list, cancel, delete, and their Vertex JSON.

`create` validates everything (request shape, model reference, input files), stores the job as
JOB_STATE_PENDING and wakes the runner; it returns the resource itself, not an operation.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select

from loopml.artifacts import ArtifactStore
from loopml.config import Settings
from loopml.errors import FailedPrecondition, InvalidArgument, NotFound
from loopml.metadata import Database
from loopml.metadata.batch_tables import BatchPredictionJobRow
from loopml.refs import ModelRef, check_parent, new_numeric_id, now, parent_name, rfc3339
from loopml.serving.batch.inputs import expand_uris
from loopml.serving.batch.runner import ACTIVE_STATES, BatchRunner
from loopml.serving.batch.sink import forget_job
from loopml.serving.batch.spec import parse_job, sanitize_name

log = logging.getLogger(__name__)

TERMINAL_STATES = (
    "JOB_STATE_SUCCEEDED",
    "JOB_STATE_FAILED",
    "JOB_STATE_CANCELLED",
    "JOB_STATE_EXPIRED",
    "JOB_STATE_PARTIALLY_SUCCEEDED",
)
COLLECTION = "batchPredictionJobs"
_ECHO_FIELDS = (
    "inputConfig",
    "instanceConfig",
    "outputConfig",
    "dedicatedResources",
    "modelParameters",
    "generateExplanation",
    "explanationSpec",
    "serviceAccount",
    "encryptionSpec",
)


def stamps(ts: Any) -> tuple[str, str]:
    """(`2024-01-02T03:04:05.678Z`, `2024_01_02T03_04_05_678Z`) for output names."""
    text = ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
    return text, text.replace("-", "_").replace(":", "_").replace(".", "_")


class BatchService:
    def __init__(
        self,
        db: Database,
        store: ArtifactStore,
        settings: Settings,
        registry: Callable[[], Any],
        warehouse: Callable[[], Any],
        serving: Callable[[], Any] | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.registry = registry
        self.runner = BatchRunner(db, store, settings, warehouse, serving)

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()

    # -- create ------------------------------------------------------------------------------
    def create_job(self, project: str, location: str, body: Any) -> dict[str, Any]:
        check_parent(project, location)
        spec = parse_job(body)
        ref = ModelRef.parse(spec.model)
        if "/models/" in spec.model and not spec.model.startswith(
            f"projects/{project}/locations/{location}/"
        ):
            raise InvalidArgument(f"model {spec.model!r} is not in projects/{project}/locations/{location}.")
        registry = self.registry()
        if registry is None:
            raise FailedPrecondition("The model registry is not available on this server.")
        resolved = registry.resolve_version(project, location, str(ref))
        if spec.gcs_uris:
            expand_uris(self.store, spec.gcs_uris)  # a clear 400 now rather than a failed job later
        created = now()
        text_ts, name_ts = stamps(created)
        model_display = resolved.display_name
        output = self._output(spec, model_display, text_ts, name_ts)
        work = {
            "model": {
                "model_name": resolved.model_name,
                "version_id": str(resolved.version_id),
                "display_name": model_display,
                "framework": resolved.framework,
                "artifact_dir": str(resolved.artifact_dir) if resolved.artifact_dir else None,
                "artifact_uri": resolved.artifact_uri or "",
                "container_spec": dict(resolved.container_spec or {}),
            },
            "output": output,
        }
        labels = body.get("labels") or {}
        if not isinstance(labels, dict):
            raise InvalidArgument("labels must be an object of strings.")
        with self.db.session() as s:
            row = BatchPredictionJobRow(
                project=project,
                location=location,
                job_id=new_numeric_id(19),
                display_name=spec.display_name,
                state="JOB_STATE_PENDING",
                model_name=resolved.model_name,
                model_version_id=str(resolved.version_id),
                spec=dict(body),
                work=work,
                output_info={},
                labels=labels,
                total_count=0,
                successful_count=0,
                failed_count=0,
                chunk_count=0,
                cancel_requested=False,
                create_time=created,
                update_time=created,
            )
            s.add(row)
            s.flush()
            result = self.to_json(row)
        self.runner.wake()
        return result

    def _output(self, spec: Any, model_display: str, text_ts: str, name_ts: str) -> dict[str, Any]:
        if spec.predictions_format == "jsonl":
            prefix = spec.gcs_output_prefix.rstrip("/")
            directory = f"{prefix}/prediction-{model_display}-{text_ts}"
            self.store.resolve(directory)  # refuses escapes and bad buckets now
            return {"kind": "jsonl", "gcsOutputDirectory": directory}
        dest = spec.bq_destination
        if dest.dataset is None:
            dataset = f"prediction_{sanitize_name(model_display)}_{name_ts}"
            return {
                "kind": "bigquery",
                "project": dest.project,
                "dataset": dataset,
                "create_dataset": True,
                "predictions_table": "predictions",
                "errors_table": "errors",
            }
        return {
            "kind": "bigquery",
            "project": dest.project,
            "dataset": dest.dataset,
            "create_dataset": False,
            "predictions_table": f"predictions_{name_ts}",
            "errors_table": f"errors_{name_ts}",
        }

    # -- read --------------------------------------------------------------------------------
    def _row(self, s: Any, project: str, location: str, job_id: str) -> BatchPredictionJobRow:
        row = s.scalars(
            select(BatchPredictionJobRow).where(
                BatchPredictionJobRow.project == project,
                BatchPredictionJobRow.location == location,
                BatchPredictionJobRow.job_id == job_id,
            )
        ).first()
        if row is None:
            raise NotFound(
                f"BatchPredictionJob {parent_name(project, location)}/{COLLECTION}/{job_id} not found."
            )
        return row  # type: ignore[no-any-return]

    def get_job(self, project: str, location: str, job_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            return self.to_json(self._row(s, project, location, job_id))

    def list_jobs(
        self,
        project: str,
        location: str,
        *,
        page_size: int = 100,
        page_token: str = "",
        filter_text: str = "",
    ) -> dict[str, Any]:
        check_parent(project, location)
        try:
            offset = int(page_token or 0)
        except ValueError:
            raise InvalidArgument(f"Invalid pageToken {page_token!r}.") from None
        page_size = max(1, min(int(page_size or 100), 1000))
        query = select(BatchPredictionJobRow).where(
            BatchPredictionJobRow.project == project, BatchPredictionJobRow.location == location
        )
        state_filter = _state_filter(filter_text)
        if state_filter:
            query = query.where(BatchPredictionJobRow.state.in_(state_filter))
        with self.db.session() as s:
            total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = s.scalars(
                query.order_by(BatchPredictionJobRow.pk.desc()).offset(offset).limit(page_size)
            ).all()
            out: dict[str, Any] = {COLLECTION: [self.to_json(r) for r in rows]}
        if offset + page_size < total:
            out["nextPageToken"] = str(offset + page_size)
        return out

    # -- cancel / delete ---------------------------------------------------------------------
    def cancel_job(self, project: str, location: str, job_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            row = self._row(s, project, location, job_id)
            if row.state in TERMINAL_STATES:
                raise FailedPrecondition(
                    f"BatchPredictionJob {job_id} is already {row.state}; it cannot be cancelled."
                )
            row.cancel_requested = True
            if row.state in ("JOB_STATE_PENDING", "JOB_STATE_QUEUED"):
                row.state = "JOB_STATE_CANCELLED"
                row.end_time = now()
            else:
                row.state = "JOB_STATE_CANCELLING"
            row.update_time = now()
        self.runner.wake()
        return {}

    def delete_job(self, project: str, location: str, job_id: str, operations: Any = None) -> dict[str, Any]:
        name = f"{parent_name(project, location)}/{COLLECTION}/{job_id}"
        with self.db.session() as s:
            row = self._row(s, project, location, job_id)
            if row.state in ACTIVE_STATES:
                raise FailedPrecondition(
                    f"BatchPredictionJob {job_id} is {row.state}; cancel it and wait for it to finish first."
                )
            s.delete(row)
            op = None
            if operations is not None:
                op = operations.record(
                    s, name, response={"@type": "type.googleapis.com/google.protobuf.Empty"}
                )
        shutil.rmtree(self.runner.work_root / job_id, ignore_errors=True)
        warehouse = self.runner.warehouse()
        if warehouse is not None:
            forget_job(warehouse, job_id)  # cursor rows of a cancelled or failed BigQuery-destination job
        return op or {
            "name": f"{name}/operations/0",
            "done": True,
            "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
        }

    # -- JSON --------------------------------------------------------------------------------
    def to_json(self, row: BatchPredictionJobRow) -> dict[str, Any]:
        spec = row.spec or {}
        out: dict[str, Any] = {
            "name": f"{parent_name(row.project, row.location)}/{COLLECTION}/{row.job_id}",
            "displayName": row.display_name,
            "model": row.model_name,
            "modelVersionId": row.model_version_id,
        }
        for key in _ECHO_FIELDS:
            if key in spec:
                out[key] = spec[key]
        batch_size = ((spec.get("manualBatchTuningParameters") or {}).get("batchSize")) or 64
        out["manualBatchTuningParameters"] = {"batchSize": int(batch_size)}
        out["state"] = row.state
        if row.error:
            out["error"] = row.error
        processed = row.successful_count + row.failed_count
        incomplete = max(0, row.total_count - processed)
        out["completionStats"] = {
            "successfulCount": str(row.successful_count),
            "failedCount": str(row.failed_count),
            "incompleteCount": str(incomplete),
        }
        out["loopmlProgress"] = {"processedCount": str(processed), "totalCount": str(row.total_count)}
        if row.state != "JOB_STATE_PENDING":
            out["outputInfo"] = _output_info((row.work or {}).get("output") or {})
        out["labels"] = row.labels or {}
        out["createTime"] = rfc3339(row.create_time)
        if row.start_time:
            out["startTime"] = rfc3339(row.start_time)
        if row.end_time:
            out["endTime"] = rfc3339(row.end_time)
        out["updateTime"] = rfc3339(row.update_time)
        return out


def _output_info(output: dict[str, Any]) -> dict[str, Any]:
    if output.get("kind") == "jsonl":
        return {"gcsOutputDirectory": output["gcsOutputDirectory"]}
    if output.get("kind") == "bigquery":
        return {
            "bigqueryOutputDataset": f"bq://{output['project']}.{output['dataset']}",
            "bigqueryOutputTable": output["predictions_table"],
        }
    return {}


def _state_filter(text: str) -> list[str]:
    """Supports `state=JOB_STATE_X` and `state=JOB_STATE_X OR state=JOB_STATE_Y`; other filters are ignored."""
    states = []
    for part in (text or "").replace('"', "").split(" OR "):
        key, _, value = part.strip().partition("=")
        if key.strip() == "state" and value.strip():
            states.append(value.strip())
    return states
