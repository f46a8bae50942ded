"""The job runner: each CustomJob is a supervised child process in its own process group.

A job thread prepares the runtime (image env, or executor env + sdist), starts the chief
replica with the job's environment, and waits for it, enforcing `scheduling.timeout` and
cancellation (SIGTERM to the process group, SIGKILL after a grace period). Output goes to
`$LOOPML_HOME/logs/jobs/<id>.log`. The child gets PR_SET_PDEATHSIG so it dies with the server
even on SIGKILL; at start the runner fails jobs a previous server left RUNNING and kills any of
their processes that survived.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import select

from loopml.errors import FailedPrecondition, LoopmlError
from loopml.metadata import Database
from loopml.metadata.jobs_tables import TrainingJobRow
from loopml.refs import now
from loopml.training.contract import job_env
from loopml.training.runtime import Launch, RuntimeResolver
from loopml.training.spec import ACTIVE_STATES, TERMINAL_STATES, parse_job_spec
from loopml.training.store import CUSTOM_JOBS, JobStore, job_name

log = logging.getLogger(__name__)

Hook = Callable[[TrainingJobRow], None]
# (job pk, the job's dataset plan, its log) -> AIP_DATA_FORMAT and AIP_*_DATA_URI variables
DataHook = Callable[[int, dict[str, Any], TextIO], dict[str, str]]


def _load_libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc Linux: jobs still die with the server on a clean stop
        return None


_LIBC = _load_libc()  # loaded once in the parent: dlopen after fork is not safe


def _pdeathsig() -> None:  # runs in the child between fork and exec
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def log_tail(path: Path, lines: int = 20, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    tail = "\n".join(line for line in text.splitlines()[-lines:])
    return tail[-limit:]


@dataclass
class _Active:
    cancel: threading.Event = field(default_factory=threading.Event)
    proc: subprocess.Popen[bytes] | None = None
    thread: threading.Thread | None = None
    container: tuple[Any, str] | None = None  # (DockerEngine, container name) of a Docker job


class JobRunner:
    def __init__(
        self,
        db: Database,
        store: JobStore,
        resolver: RuntimeResolver,
        *,
        logs_dir: Path,
        url: str,
        extra_env: Callable[[], dict[str, str]] | None = None,
        grace_s: float = 5.0,
        poll_s: float = 0.2,
    ) -> None:
        self.db = db
        self.store = store
        self.resolver = resolver
        self.logs_dir = logs_dir
        self.url = url
        self.extra_env = extra_env
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.on_started: list[Hook] = []
        self.on_finished: list[Hook] = []
        self.prepare_data: DataHook | None = None  # set by the TrainingService (managed datasets)
        self._active: dict[int, _Active] = {}
        self._lock = threading.Lock()
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Recover from a previous server: RUNNING jobs fail (their processes are killed), PENDING
        ones start again."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        pending: list[int] = []
        with self.db.session() as s:
            rows = s.scalars(
                select(TrainingJobRow).where(
                    TrainingJobRow.collection == CUSTOM_JOBS, TrainingJobRow.state.in_(ACTIVE_STATES)
                )
            ).all()
            for row in rows:
                if (
                    row.state in ("JOB_STATE_PENDING", "JOB_STATE_QUEUED")
                    and not row.pid
                    and row.start_time is None  # never launched (a launch attempt sets it first)
                    and not row.cancel_requested
                ):
                    pending.append(row.pk)
                    continue
                if row.pid and group_alive(row.pid):
                    kill_group(row.pid, signal.SIGKILL)
        for row in rows:
            if row.pk in pending:
                continue
            reason = (
                "The job was cancelled while the loopml server was down."
                if row.cancel_requested
                else "The loopml server stopped while this job was running; the job was marked FAILED. "
                "Submit it again to rerun it."
            )
            state = "JOB_STATE_CANCELLED" if row.cancel_requested else "JOB_STATE_FAILED"
            moved = self.store.finish(
                row.pk, state, {"code": 10 if not row.cancel_requested else 1, "message": reason}
            )
            if moved is not None:
                self._notify(self.on_finished, moved)
        for pk in pending:
            self.submit(pk)

    def stop(self) -> None:
        """Stop every job (jobs never outlive the server) and mark them FAILED."""
        self._stopping = True
        with self._lock:
            active = list(self._active.items())
        for _pk, act in active:
            act.cancel.set()
        deadline = time.monotonic() + self.grace_s + 5
        for _pk, act in active:
            if act.thread is not None:
                act.thread.join(max(0.1, deadline - time.monotonic()))

    # -- API -------------------------------------------------------------------------------
    def submit(self, pk: int) -> None:
        act = _Active()
        thread = threading.Thread(target=self._run, args=(pk, act), name=f"job-{pk}", daemon=True)
        act.thread = thread
        with self._lock:
            self._active[pk] = act
        thread.start()

    def cancel(self, pk: int) -> bool:
        """Signal a running job; False if this runner is not running it."""
        with self._lock:
            act = self._active.get(pk)
        if act is None:
            return False
        act.cancel.set()
        return True

    def is_active(self, pk: int) -> bool:
        with self._lock:
            return pk in self._active

    # -- the job thread --------------------------------------------------------------------
    def _notify(self, hooks: list[Hook], row: TrainingJobRow) -> None:
        for hook in hooks:
            try:
                hook(row)
            except Exception:
                log.exception("job hook failed for %s", job_name(row))

    def _run(self, pk: int, act: _Active) -> None:
        try:
            self._execute(pk, act)
        except Exception as exc:  # never leave a job without a terminal state
            log.exception("job %s crashed in the runner", pk)
            moved = self.store.finish(
                pk, "JOB_STATE_FAILED", {"code": 13, "message": f"loopml runner error: {exc}"}
            )
            if moved is not None:
                self._notify(self.on_finished, moved)
        finally:
            with self._lock:
                self._active.pop(pk, None)

    def _execute(self, pk: int, act: _Active) -> None:
        with self.db.session() as s:
            row = s.get(TrainingJobRow, pk)
            assert row is not None
            spec = parse_job_spec(row.spec.get("jobSpec", {}))
            project, location, job_id = row.project, row.location, row.job_id
            data_env = dict(row.spec.get("dataEnv") or {})
            dataset_plan = row.spec.get("datasetPlan")
            log_path = Path(row.log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", buffering=1, encoding="utf-8", errors="replace") as logf:
            logf.write(f"[loopml] job {job_id} accepted at {now().isoformat()}\n")
            if len(spec.pools) > 1 or spec.chief.replica_count > 1:
                logf.write("[loopml] note: only the chief replica (workerpool0-0) runs on one machine\n")
            try:
                launch: Launch = self.resolver.launch(spec.chief, logf)
            except LoopmlError as exc:
                logf.write(f"[loopml] preparing the job failed: {exc.message}\n")
                self._finish(pk, "JOB_STATE_FAILED", 9, f"Preparing the job failed: {exc.message}")
                return
            if act.cancel.is_set():
                self._finish(pk, "JOB_STATE_CANCELLED", 1, "The job was cancelled before it started.")
                return
            if dataset_plan:
                try:
                    if self.prepare_data is None:
                        raise FailedPrecondition("managed datasets are not configured on this server")
                    data_env.update(self.prepare_data(pk, dataset_plan, logf))
                except LoopmlError as exc:
                    logf.write(f"[loopml] preparing the dataset failed: {exc.message}\n")
                    self._finish(pk, "JOB_STATE_FAILED", 9, f"Preparing the dataset failed: {exc.message}")
                    return
                if act.cancel.is_set():  # cancelled while the split was written
                    self._finish(pk, "JOB_STATE_CANCELLED", 1, "The job was cancelled before it started.")
                    return
            cwd = launch.cwd or self.logs_dir.parent.parent / "jobs" / job_id
            cwd.mkdir(parents=True, exist_ok=True)
            if launch.docker is not None:
                try:
                    argv, proc_env, shown = self._docker_argv(
                        launch, job_id, act, spec, project, location, data_env
                    )
                except LoopmlError as exc:
                    logf.write(f"[loopml] preparing the container failed: {exc.message}\n")
                    self._finish(pk, "JOB_STATE_FAILED", 9, f"Preparing the job failed: {exc.message}")
                    return
            else:
                argv, shown = launch.argv, " ".join(launch.argv)
                proc_env = job_env(
                    base_env=dict(os.environ),
                    bin_dirs=launch.bin_dirs,
                    image_env=launch.env,
                    user_env=spec.chief.env,
                    project=project,
                    location=location,
                    job_id=job_id,
                    base_output_dir=spec.base_output_dir,
                    data=data_env,
                    url=self.url,
                    extra=self.extra_env() if self.extra_env else None,
                )
            logf.write(f"[loopml] starting workerpool0-0: {shown} (cwd {cwd})\n")
            self.store.update(pk, start_time=now())  # a launch attempt: recovery fails it, never reruns it
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=str(cwd),
                    env=proc_env,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_pdeathsig,
                )
            except OSError as exc:
                logf.write(f"[loopml] could not start the process: {exc}\n")
                self._finish(pk, "JOB_STATE_FAILED", 9, f"Could not start {argv[0]!r}: {exc}")
                return
            act.proc = proc
            started = self.store.update(pk, state="JOB_STATE_RUNNING", pid=proc.pid, start_time=now())
            self._notify(self.on_started, started)
            outcome = self._wait(proc, act, spec.timeout_s)
            kill_group(proc.pid, signal.SIGKILL)  # stray grandchildren never outlive the job
            if act.container is not None:
                engine, name = act.container
                # normally gone already (--rm); never left behind, even when a cancel came so
                # early that the daemon created the container only after `docker stop`
                engine.remove_until_gone(name)
            logf.write(f"[loopml] job {job_id} ended: {outcome[0]} (exit {proc.returncode})\n")
            if spec.base_output_dir:
                outcome = self._publish_outputs(spec.base_output_dir, outcome, logf)
        state, code, message = outcome
        if state == "JOB_STATE_FAILED" and message.startswith("The replica"):
            tail = log_tail(log_path)
            message = f"{message}\nLast lines of the log:\n{tail}" if tail else message
        self._finish(pk, state, code, message)

    def _docker_argv(
        self,
        launch: Launch,
        job_id: str,
        act: _Active,
        spec: Any,
        project: str,
        location: str,
        data: dict[str, str],
    ) -> tuple[list[str], dict[str, str], str]:
        """`docker run …` for a job on a Docker image, the docker CLI's environment (with the
        values of the container variables, passed by name) and the command line for the log.

        The container gets the same contract variables as a host process (AIP_*, CLOUD_ML_*,
        the emulator variables, containerSpec.env), but none of the host's PATH/HOME; the
        buckets are mounted at /gcs (`LOOPML_GCS_ROOT=/gcs`).
        """
        import dataclasses

        from loopml.images.docker import env_for_container

        extra = dict(self.extra_env() if self.extra_env else {})
        extra.pop("LOOPML_GCS_MOUNT", None)
        extra["LOOPML_GCS_ROOT"] = "/gcs"
        env = job_env(
            base_env={},
            bin_dirs=[],
            image_env={},
            user_env=spec.chief.env,
            project=project,
            location=location,
            job_id=job_id,
            base_output_dir=spec.base_output_dir,
            data=data,
            url=self.url,
            extra=extra,
        )
        engine = launch.engine
        name = engine.name("job", job_id)
        run = dataclasses.replace(launch.docker, env=env_for_container(env))
        command = engine.run_command(name, run)
        engine.remove(name)  # a container of that name left by an earlier attempt
        act.container = (engine, name)
        return list(command.argv), dict(command.env), command.shown

    def _publish_outputs(
        self, base_output_dir: str, outcome: tuple[str, int, str], logf: TextIO
    ) -> tuple[str, int, str]:
        """Upload what the job wrote under its base output directory to the object store (if
        there is one), before the job counts as finished; a failed upload fails the job."""
        try:
            count = self.resolver.store.publish(base_output_dir)
        except (LoopmlError, OSError) as exc:
            message = exc.message if isinstance(exc, LoopmlError) else str(exc)
            logf.write(f"[loopml] uploading the job's outputs to the object store failed: {message}\n")
            if outcome[0] == "JOB_STATE_SUCCEEDED":
                return (
                    "JOB_STATE_FAILED",
                    14,
                    f"Uploading the job's outputs to the object store failed: {message}",
                )
            return outcome
        if count:
            logf.write(
                f"[loopml] uploaded {count} output file(s) under {base_output_dir} to the object store\n"
            )
        return outcome

    def _wait(
        self, proc: subprocess.Popen[bytes], act: _Active, timeout_s: float | None
    ) -> tuple[str, int, str]:
        started = time.monotonic()
        while True:
            try:
                rc = proc.wait(timeout=self.poll_s)
            except subprocess.TimeoutExpired:
                rc = None
            if rc is not None:
                if rc == 0:
                    return "JOB_STATE_SUCCEEDED", 0, ""
                how = f"was killed by signal {-rc}" if rc < 0 else f"exited with a non-zero status of {rc}"
                return "JOB_STATE_FAILED", 13, f"The replica workerpool0-0 {how}."
            if act.cancel.is_set():
                self._terminate(proc, act)
                if self._stopping:
                    return "JOB_STATE_FAILED", 10, "The loopml server stopped while this job was running."
                return "JOB_STATE_CANCELLED", 1, "The job was cancelled."
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                self._terminate(proc, act)
                return "JOB_STATE_FAILED", 4, f"The job timed out after {timeout_s:g}s (scheduling.timeout)."

    def _terminate(self, proc: subprocess.Popen[bytes], act: _Active | None = None) -> None:
        if act is not None and act.container is not None:
            # `docker stop`: SIGTERM in the container, SIGKILL after the grace period; the
            # `docker run` process then exits with the container.
            engine, name = act.container
            engine.stop(name, self.grace_s)
            try:
                proc.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                pass
        kill_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.grace_s)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid, signal.SIGKILL)
            proc.wait()

    def _finish(self, pk: int, state: str, code: int, message: str) -> None:
        error = None if state == "JOB_STATE_SUCCEEDED" else {"code": code, "message": message}
        moved = self.store.finish(pk, state, error)
        if moved is not None:
            self._notify(self.on_finished, moved)


def is_terminal(state: str) -> bool:
    return state in TERMINAL_STATES


def describe(row: TrainingJobRow) -> dict[str, Any]:
    return {"name": job_name(row), "state": row.state, "pid": row.pid}
