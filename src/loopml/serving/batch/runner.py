"""Runs batch prediction jobs in the background and resumes them after a crash.

One scheduler thread takes jobs in creation order. A job's input is snapshotted once (Arrow IPC
in `<home>/batch/<job id>/`), cut into fixed chunks, and the chunks are predicted by a pool of up
to `maxReplicaCount` workers (threads in the server, or spawned processes). A chunk counts as done
only once its outputs are durably written under their deterministic names *and* a chunk row plus
the job's counters are committed in one metadata transaction. After a kill -9 the job is found in
RUNNING at the next start and only chunks without a row are (re)computed: nothing is lost and
nothing is written twice. For BigQuery destinations the chunk's rows and its cursor entry are
appended in one DuckDB transaction (`sink.py`); JSONL shards are written under deterministic names.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlalchemy import select

from loopml.artifacts import ArtifactStore
from loopml.config import Settings
from loopml.errors import LoopmlError
from loopml.metadata import Database
from loopml.metadata.batch_tables import BatchPredictionChunkRow, BatchPredictionJobRow
from loopml.refs import now
from loopml.serving.batch.chunk import InstanceOptions
from loopml.serving.batch.containers import start_container_predictor
from loopml.serving.batch.inputs import count_rows, read_source, stream_chunks
from loopml.serving.batch.outputs import atomic_write
from loopml.serving.batch.pipeline import chunk_bounds, drive
from loopml.serving.batch.predictors import CACHE, close_predictor
from loopml.serving.batch.prefetch import prefetch
from loopml.serving.batch.sink import WarehouseSink, forget_job
from loopml.serving.batch.spec import parse_job
from loopml.serving.batch.worker import ChunkOutcome, ChunkTask, ModelInfo

log = logging.getLogger(__name__)

ACTIVE_STATES = ("JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_CANCELLING")
VECTORISED = ("sklearn", "xgboost")


class JobFailed(Exception):
    pass


class BatchRunner:
    def __init__(
        self,
        db: Database,
        store: ArtifactStore,
        settings: Settings,
        warehouse: Callable[[], Any],
        serving: Callable[[], Any] | None = None,
    ) -> None:
        self.db = db
        self.serving = serving or (lambda: None)
        self.store = store
        self.settings = settings
        self.warehouse = warehouse
        self.work_root = settings.resolved_home() / "batch"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer: cf.ThreadPoolExecutor | None = None  # warehouse appends, one at a time

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="loopml-batch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            with self.db.session() as s:
                pending = s.scalars(
                    select(BatchPredictionJobRow.pk)
                    .where(BatchPredictionJobRow.state.in_(ACTIVE_STATES))
                    .order_by(BatchPredictionJobRow.pk)
                ).all()
            for pk in pending:
                if self._stop.is_set():
                    return
                try:
                    self.run_job(pk)
                except Exception as exc:
                    log.exception("batch job %s crashed the runner; marking it failed", pk)
                    message = f"Internal error: {type(exc).__name__}: {exc}"
                    self._finish(pk, "JOB_STATE_FAILED", {"code": 13, "message": message})
            self._wake.wait(timeout=2.0)

    # -- one job -----------------------------------------------------------------------------
    def run_job(self, pk: int) -> None:
        with self.db.session() as s:
            row = s.get(BatchPredictionJobRow, pk)
            if row is None or row.state not in ACTIVE_STATES:
                return
            if row.cancel_requested:
                row.state, row.end_time, row.update_time = "JOB_STATE_CANCELLED", now(), now()
                return
            row.state = "JOB_STATE_RUNNING"
            row.start_time = row.start_time or now()
            row.update_time = now()
            job_name = f"projects/{row.project}/locations/{row.location}/batchPredictionJobs/{row.job_id}"
            job_id, spec_json, work, model_json = (
                row.job_id,
                dict(row.spec),
                dict(row.work),
                row.work["model"],
            )
        model = ModelInfo(**model_json)
        work_dir = self.work_root / job_id
        try:
            t0 = time.perf_counter()
            work = self._stage(pk, work_dir, spec_json, work, model)
            t1 = time.perf_counter()
            if model.framework == "custom-container":
                self._start_containers(job_name, job_id, work_dir, spec_json, model)
            finished = self._run_chunks(pk, job_id, job_name, work_dir, spec_json, work, model)
            t2 = time.perf_counter()
            if finished is None:
                return  # stopping: the job stays RUNNING and resumes at the next start
            if finished == "cancelled":
                self._finish(pk, "JOB_STATE_CANCELLED", None)
                return
            self._finalize(pk, work_dir, spec_json, work)
            log.info(
                "batch job %s: input staged in %.3fs, chunks predicted in %.3fs, outputs loaded in %.3fs",
                job_id,
                t1 - t0,
                t2 - t1,
                time.perf_counter() - t2,
            )
        except (LoopmlError, JobFailed, ValueError, OSError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            log.warning("batch job %s failed: %s", job_id, message)
            self._finish(pk, "JOB_STATE_FAILED", {"code": getattr(exc, "grpc_code", 3), "message": message})
        finally:
            predictor = CACHE.pop(model.key())
            if predictor is not None:
                close_predictor(predictor)

    def _stage(
        self, pk: int, work_dir: Path, spec_json: dict[str, Any], work: dict[str, Any], model: ModelInfo
    ) -> dict[str, Any]:
        input_path = work_dir / "input.arrow"
        if work.get("staged") and (work.get("streamed") or input_path.exists()):
            return work
        spec = parse_job(spec_json)
        streamed = spec.instances_format == "bigquery" and self.settings.batch_worker_mode != "process"
        if streamed:  # read chunk by chunk while predicting; counted now, re-read on resume
            assert spec.bq_source is not None
            total = count_rows(self._need_warehouse(), spec.bq_source)
        else:
            table = read_source(spec, self.store, self.warehouse())
            atomic_write(input_path, table, fsync=self.settings.batch_fsync)
            total = table.num_rows
        if model.framework in VECTORISED:
            chunk_rows = self.settings.batch_chunk_rows
        else:
            chunk_rows = min(self.settings.batch_chunk_rows, max(spec.batch_size * 16, 1024))
        chunk_rows = max(1, chunk_rows)
        ramp = model.framework in VECTORISED  # small first chunks: the writer starts early
        work = {**work, "staged": True, "streamed": streamed, "chunk_rows": chunk_rows, "ramp": ramp}
        with self.db.session() as s:
            row = s.get(BatchPredictionJobRow, pk)
            assert row is not None
            row.work = work
            row.total_count = total
            row.chunk_count = len(chunk_bounds(total, chunk_rows, ramp))  # empty input: one empty chunk
            row.update_time = now()
        return work

    def _start_containers(
        self, job_name: str, job_id: str, work_dir: Path, spec_json: dict[str, Any], model: ModelInfo
    ) -> None:
        spec = parse_job(spec_json)
        serving = self.serving()
        if serving is None:
            raise JobFailed("No serving runtime on this server: cannot start the model's container.")
        replicas = max(1, min(spec.starting_replica_count, spec.max_replica_count, os.cpu_count() or 1))
        deployed = model.deployed_spec(job_name, job_id, replicas)
        predictor = start_container_predictor(
            serving, deployed, replicas, work_dir / "logs", self.settings.replica_start_timeout_s
        )
        CACHE.get(model.key(), lambda: predictor)

    def _out_dir(self, work_dir: Path, work: dict[str, Any]) -> tuple[str, Path]:
        if work["output"]["kind"] == "jsonl":
            return "jsonl", self.store.resolve(work["output"]["gcsOutputDirectory"])
        return "bigquery", work_dir

    def _run_chunks(
        self,
        pk: int,
        job_id: str,
        job_name: str,
        work_dir: Path,
        spec_json: dict[str, Any],
        work: dict[str, Any],
        model: ModelInfo,
    ) -> str | None:
        spec = parse_job(spec_json)
        sink = None
        if work["output"]["kind"] == "bigquery":
            warehouse = self.warehouse()
            if warehouse is None:
                raise JobFailed("The warehouse is not available: cannot write the BigQuery destination.")
            sink = WarehouseSink(warehouse, job_id, work["output"])
            for index, (ok, failed) in sink.committed().items():  # in the output, maybe not yet recorded
                self._commit(pk, index, ok, failed)
        with self.db.session() as s:
            row = s.get(BatchPredictionJobRow, pk)
            assert row is not None
            total, chunk_count = row.total_count, row.chunk_count
            done = set(
                s.scalars(
                    select(BatchPredictionChunkRow.chunk_index).where(BatchPredictionChunkRow.job_pk == pk)
                ).all()
            )
        opts = InstanceOptions(
            instances_format=spec.instances_format,
            instance_type=spec.instance_type,
            key_field=spec.key_field,
            included_fields=tuple(spec.included_fields),
            excluded_fields=tuple(spec.excluded_fields),
        )
        kind, out_dir = self._out_dir(work_dir, work)
        bounds = chunk_bounds(total, int(work["chunk_rows"]), bool(work.get("ramp")))
        if len(bounds) != chunk_count:
            raise JobFailed(
                f"The job's chunk plan changed ({chunk_count} chunks recorded, {len(bounds)} now)."
            )

        def task(i: int, table: pa.Table | None = None) -> ChunkTask:
            return ChunkTask(
                job_id=job_id,
                job_name=job_name,
                index=i,
                start=bounds[i][0],
                length=bounds[i][1],
                input_path=str(work_dir / "input.arrow"),
                opts=opts,
                model=model,
                batch_size=spec.batch_size,
                parameters=spec.model_parameters,
                output_kind=kind,
                out_dir=str(out_dir),
                replicas=spec.max_replica_count,
                fsync=self.settings.batch_fsync,
                table=table,
            )

        todo = [i for i in range(chunk_count) if i not in done]
        if not todo:
            return "done"
        workers = max(1, min(spec.max_replica_count, os.cpu_count() or 1, len(todo)))
        tasks: Iterator[ChunkTask]
        if work.get("streamed"):
            assert spec.bq_source is not None
            warehouse = self._need_warehouse()
            if count_rows(warehouse, spec.bq_source) != total:
                raise JobFailed(
                    f"The source table {spec.bq_source.uri()} changed while the job was interrupted "
                    f"(it had {total} rows); run a new job."
                )
            streamed = stream_chunks(warehouse, spec.bq_source, [length for _, length in bounds])
            tasks = prefetch((task(i, t) for i, t in enumerate(streamed) if i not in done), depth=workers)
        else:
            tasks = iter([task(i) for i in todo])
        pool = self._pool(workers, model)
        writer = None
        if sink is not None:
            if self._writer is None:
                self._writer = cf.ThreadPoolExecutor(1, thread_name_prefix="loopml-batch-writer")
            writer = self._writer

        def append(out: ChunkOutcome) -> None:
            assert sink is not None and out.tables is not None
            sink.append(out.index, *out.tables)

        def record(out: ChunkOutcome) -> bool:
            log.debug(
                "batch job %s chunk %s: %s ok, %s failed", job_id, out.index, out.successful, out.failed
            )
            return self._commit(pk, out.index, out.successful, out.failed)

        try:
            return drive(
                pool,
                tasks,
                workers,
                writer,
                append if sink is not None else None,
                record,
                self._stop.is_set,
                self.settings.batch_test_pause_after_chunk_s,
            )
        finally:
            close = getattr(tasks, "close", None)
            if close is not None:
                close()  # stops the reader thread of a streamed input
            pool.shutdown(wait=True, cancel_futures=True)

    def _need_warehouse(self) -> Any:
        warehouse = self.warehouse()
        if warehouse is None:
            raise JobFailed("The warehouse is not available on this server.")
        return warehouse

    def _pool(self, workers: int, model: ModelInfo) -> cf.Executor:
        if self.settings.batch_worker_mode == "process" and model.framework != "custom-container":
            return cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        return cf.ThreadPoolExecutor(workers, thread_name_prefix="loopml-batch-worker")

    def _commit(self, pk: int, index: int, ok: int, failed: int) -> bool:
        """Record a chunk whose outputs are in place; returns True if cancellation was requested."""
        with self.db.session() as s:
            row = s.get(BatchPredictionJobRow, pk)
            assert row is not None
            exists = s.scalars(
                select(BatchPredictionChunkRow.pk).where(
                    BatchPredictionChunkRow.job_pk == pk, BatchPredictionChunkRow.chunk_index == index
                )
            ).first()
            if exists is None:
                s.add(
                    BatchPredictionChunkRow(
                        job_pk=pk, chunk_index=index, successful_count=ok, failed_count=failed
                    )
                )
                row.successful_count += ok
                row.failed_count += failed
            row.update_time = now()
            return bool(row.cancel_requested)

    def _finalize(self, pk: int, work_dir: Path, spec_json: dict[str, Any], work: dict[str, Any]) -> None:
        with self.db.session() as s:
            row = s.get(BatchPredictionJobRow, pk)
            assert row is not None
            row_job_id, ok, failed = row.job_id, row.successful_count, row.failed_count
        if work["output"]["kind"] == "bigquery":
            warehouse = self.warehouse()
            if warehouse is not None:
                forget_job(warehouse, row_job_id)
        if work["output"]["kind"] == "jsonl":  # the output files to the object store, if there is one
            self.store.publish(work["output"]["gcsOutputDirectory"])
        if ok == 0 and failed > 0:
            self._finish(
                pk,
                "JOB_STATE_FAILED",
                {
                    "code": 3,
                    "message": f"All {failed} instances failed; see the errors output for each error.",
                },
            )
        else:
            self._finish(pk, "JOB_STATE_SUCCEEDED", None)
        shutil.rmtree(work_dir, ignore_errors=True)

    def _finish(self, pk: int, state: str, error: dict[str, Any] | None) -> None:
        with self.db.session() as s:
            row = s.get(BatchPredictionJobRow, pk)
            if row is None:
                return
            row.state = state
            row.error = error
            row.end_time = now()
            row.update_time = now()
