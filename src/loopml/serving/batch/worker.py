"""The unit of work of a batch job: predict one chunk and write its outputs.

`run_chunk` takes only plain data (a `ChunkTask`), so it runs the same in a thread of the server
or in a worker process; the predictor is loaded once per process and cached.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from loopml.serving.batch.chunk import InstanceOptions, predict_chunk, prepare
from loopml.serving.batch.outputs import atomic_write, jsonl_outputs, read_arrow, table_outputs
from loopml.serving.batch.predictors import CACHE, load_predictor
from loopml.serving.spec import DeployedModelSpec


@dataclass(frozen=True)
class ModelInfo:
    model_name: str
    version_id: str
    display_name: str
    framework: str
    artifact_dir: str | None
    artifact_uri: str
    container_spec: dict[str, Any]

    def key(self) -> tuple[str, str]:
        return (self.framework, self.artifact_dir or f"{self.model_name}@{self.version_id}")

    def deployed_spec(self, job_name: str, job_id: str, replicas: int) -> DeployedModelSpec:
        """What a loader (or the container runtime) sees: the job stands in for the endpoint."""
        return DeployedModelSpec(
            endpoint_name=job_name,
            endpoint_id="batch",
            deployed_model_id=f"batch-{job_id}",
            model_name=self.model_name,
            model_version_id=self.version_id,
            model_display_name=self.display_name,
            framework=self.framework,
            artifact_dir=Path(self.artifact_dir) if self.artifact_dir else None,
            artifact_uri=self.artifact_uri,
            container_spec=self.container_spec,
            min_replicas=1,
            max_replicas=max(1, replicas),
            extra={"batch": True},
        )


@dataclass(frozen=True)
class ChunkTask:
    job_id: str
    job_name: str
    index: int
    start: int
    length: int
    input_path: str
    opts: InstanceOptions
    model: ModelInfo
    batch_size: int
    parameters: Any
    output_kind: str  # "jsonl" | "bigquery"
    out_dir: str
    replicas: int = 1
    fsync: bool = True
    table: pa.Table | None = None  # streamed input (thread workers): the chunk's rows themselves


def get_predictor(task: ChunkTask) -> Any:
    model = task.model
    return CACHE.get(
        model.key(),
        lambda: load_predictor(
            model.framework,
            Path(model.artifact_dir) if model.artifact_dir else None,
            model.deployed_spec(task.job_name, task.job_id, task.replicas),
        ),
    )


def shard_names(index: int) -> tuple[str, str]:
    return f"predictions_{index + 1:04d}.jsonl", f"errors_{index + 1:04d}.jsonl"


@dataclass
class ChunkOutcome:
    index: int
    successful: int
    failed: int
    seconds: float
    tables: tuple[pa.Table, pa.Table] | None = None  # BigQuery destinations: committed by the runner


def run_chunk(task: ChunkTask) -> ChunkOutcome:
    """Predict one chunk. JSONL outputs are written here (deterministic shard names, atomically);
    BigQuery outputs are returned for the runner to append in one transaction with the cursor."""
    began = time.perf_counter()
    predictor = get_predictor(task)
    if task.table is not None:
        source = task.table
    else:
        source = read_arrow(Path(task.input_path)).slice(task.start, task.length)
    prepared = prepare(source, task.opts)
    result = predict_chunk(
        prepared, predictor, task.opts, batch_size=task.batch_size, parameters=task.parameters
    )
    if task.output_kind != "jsonl":
        tables = table_outputs(prepared, result, task.opts)
        return ChunkOutcome(
            task.index, len(result.ok), len(result.errors), time.perf_counter() - began, tables
        )
    out_dir = Path(task.out_dir)
    pred_name, err_name = shard_names(task.index)
    lines, errors = jsonl_outputs(prepared, result, task.opts)
    atomic_write(out_dir / pred_name, lines, fsync=task.fsync)
    if errors:
        atomic_write(out_dir / err_name, errors, fsync=task.fsync)
    else:
        (out_dir / err_name).unlink(missing_ok=True)
    return ChunkOutcome(task.index, len(result.ok), len(result.errors), time.perf_counter() - began)
