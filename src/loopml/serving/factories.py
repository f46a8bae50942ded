"""How replicas of a deployed model are made: built-in model servers or custom containers.

Mixed into the serving service; decided once per deployment (at deploy time, never per request).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from loopml.errors import FailedPrecondition, LoopmlError
from loopml.serving import loaders
from loopml.serving.containers import ContainerReplica, build_container_env, container_argv
from loopml.serving.handler import BatchHandler
from loopml.serving.replicas import InProcessReplica, ProcessReplica, base_env
from loopml.serving.spec import DeployedModelSpec

CUSTOM = "custom-container"
STORAGE_BUCKET = "loopml-serving"


def _meta(spec: DeployedModelSpec) -> dict[str, str]:
    return {
        "deployedModelId": spec.deployed_model_id,
        "model": spec.model_name,
        "modelVersionId": spec.model_version_id,
        "modelDisplayName": spec.model_display_name,
    }


def _first_port(container_spec: dict[str, Any]) -> int:
    """The first `containerSpec.ports[].containerPort`, Vertex's AIP_HTTP_PORT (default 8080)."""
    for port in container_spec.get("ports") or []:
        if isinstance(port, dict):
            try:
                value = int(port.get("containerPort") or 0)
            except (TypeError, ValueError):
                continue
            if 0 < value < 65536:
                return value
    return 8080


class FactoryMixin:
    # Provided by ServingService.
    platform: Any
    settings: Any
    artifacts: Any
    _sock_dir: Path | None

    def _check_artifacts(self, spec: DeployedModelSpec) -> None:
        if spec.framework == CUSTOM:
            return
        loaders.get_loader(spec.framework)
        if spec.artifact_dir is None:
            raise FailedPrecondition(
                f"Model {spec.model_name}@{spec.model_version_id} has no artifacts to serve with the "
                f"built-in {spec.framework} server."
            )
        if not self.artifacts.is_inside(spec.artifact_dir) or not Path(spec.artifact_dir).is_dir():
            raise FailedPrecondition(
                f"The artifacts of {spec.model_name}@{spec.model_version_id} are not inside the artifact "
                "store; only registered snapshots are served."
            )

    def _socket_dir(self) -> Path:
        """`$LOOPML_HOME/run/sockets` (stale sockets of a killed server are replaced), or a
        private temporary directory when that path is too long for Unix socket names."""
        if self._sock_dir is None:
            candidate = self.settings.resolved_home() / "run" / "sockets"
            if len(str(candidate)) <= 80:
                candidate.mkdir(parents=True, exist_ok=True)
                candidate.chmod(0o700)
                self._sock_dir = candidate
            else:
                self._sock_dir = Path(tempfile.mkdtemp(prefix="loopml-sock-"))
        return self._sock_dir

    def _replica_factory(self, spec: DeployedModelSpec) -> Any:
        timeout = float(self.settings.replica_start_timeout_s)
        if spec.framework == CUSTOM:
            return self._container_factory(spec, timeout)
        ref = loaders.factory_ref(spec.framework)
        meta = _meta(spec)
        if ref is None:

            def make_handler() -> BatchHandler:
                assert spec.artifact_dir is not None
                predictor = loaders.get_loader(spec.framework)(Path(spec.artifact_dir), spec)
                return BatchHandler(predictor, meta)

            return lambda rid, log_path: InProcessReplica(rid, log_path, make_handler)
        fields = dataclasses.asdict(spec)
        fields["artifact_dir"] = str(spec.artifact_dir)
        config = {
            "python": self._replica_python(spec),
            "factory": ref,
            "artifact_dir": str(spec.artifact_dir),
            "store_root": str(self.artifacts.root),
            "spec": fields,
            "meta": meta,
            "log_level": self.settings.log_level,
        }
        sock_dir = self._socket_dir()
        max_batch = max(1, int(self.settings.serving_max_batch))
        depth = max(1, int(self.settings.serving_pipeline_depth))

        def make(rid: str, log_path: Path) -> ProcessReplica:
            replica = ProcessReplica(rid, log_path, timeout, sock_dir / f"{rid}.sock", config)
            replica.max_batch = max_batch
            replica.depth = depth
            return replica

        return make

    def _replica_python(self, spec: DeployedModelSpec) -> str:
        """The interpreter of a built-in replica: ours, or for a Python predictor whose manifest
        lists `requirements`, a venv layered on ours with them installed (cached by their hash)."""
        if spec.framework != "python" or spec.artifact_dir is None:
            return sys.executable
        from loopml.serving.python_predictor import read_manifest

        reqs = read_manifest(Path(spec.artifact_dir)).get("requirements") or []
        if not isinstance(reqs, list) or not all(isinstance(r, str) and r.strip() for r in reqs):
            raise FailedPrecondition(
                'loopml_model.json "requirements" must be a list of requirement strings.'
            )
        if not reqs:
            return sys.executable
        from loopml.training.runtime import layered_env

        key = hashlib.sha256("\n".join([sys.executable, *sorted(reqs)]).encode()).hexdigest()[:24]
        home = self.settings.resolved_home()
        log_path = home / "logs" / "replicas" / f"{spec.deployed_model_id}-env.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as logf:
            packages: Any = list(reqs)  # pip takes requirement strings as well as sdist paths
            return layered_env(home / "envs" / "predictors" / key, sys.executable, packages, logf)

    def _container_factory(self, spec: DeployedModelSpec, timeout: float) -> Any:
        cs = spec.container_spec or {}
        runtime = None
        images = self.platform.services.get("images")
        image_uri = cs.get("imageUri")
        docker = images.docker_for(image_uri) if images is not None and image_uri else None
        if docker is not None:
            return self._docker_factory(spec, timeout, docker)
        if images is not None and image_uri:
            runtime = images.resolve(image_uri)
        argv, cwd = container_argv(spec, runtime)
        env, predict_route, health_route, _ = self._container_env(spec, runtime, base_env())
        if cwd is None:
            cwd = self.settings.resolved_home() / "run" / "containers" / spec.deployed_model_id
            cwd.mkdir(parents=True, exist_ok=True)
        meta = _meta(spec)
        preferred_port = _first_port(cs)
        return lambda rid, log_path: ContainerReplica(
            rid,
            log_path,
            timeout,
            argv=argv,
            env=env,
            cwd=cwd,
            predict_route=predict_route,
            health_route=health_route,
            meta=meta,
            preferred_port=preferred_port,
        )

    def _docker_factory(self, spec: DeployedModelSpec, timeout: float, docker: Any) -> Any:
        """Replicas run by the Docker engine: `docker run` with the same AIP_* contract, the
        emulator variables (host network: the server's 127.0.0.1 URL works) and the local copy
        of the model's artifacts mounted read-only at its own path."""
        from loopml.images.docker import DockerRun, check_image_ref
        from loopml.serving.docker_replica import DockerContainerReplica

        cs = spec.container_spec or {}
        check_image_ref(str(cs.get("imageUri")))
        docker.check()  # a 400 when the engine is not reachable (docker info's text: log only)
        env, predict_route, health_route, storage_uri = self._container_env(
            spec, None, {"PYTHONUNBUFFERED": "1"}
        )
        mounts: list[tuple[str, str, bool]] = []
        if storage_uri:
            local = str(
                self.artifacts.bucket_path(STORAGE_BUCKET) / spec.endpoint_id / spec.deployed_model_id
            )
            mounts.append((local, local, True))
        command = [str(x) for x in cs.get("command") or []]
        args = [str(x) for x in cs.get("args") or []]
        run = DockerRun(str(cs.get("imageUri")), "replica", command, args, mounts=mounts)
        meta = _meta(spec)
        preferred_port = _first_port(cs)
        return lambda rid, log_path: DockerContainerReplica(
            rid,
            log_path,
            timeout,
            engine=docker,
            run=run,
            env=env,
            predict_route=predict_route,
            health_route=health_route,
            meta=meta,
            preferred_port=preferred_port,
        )

    def _container_env(
        self, spec: DeployedModelSpec, runtime: Any, base: dict[str, str]
    ) -> tuple[dict[str, str], str, str, str]:
        """A custom container's environment over `base` (the AIP_* contract and the emulator
        variables for this server) and (env, predict route, health route, AIP_STORAGE_URI);
        copies the model's artifacts to the serving bucket (`_storage_copy`)."""
        from loopml.training.contract import emulator_env

        cs = spec.container_spec or {}
        prefix = f"/v1/endpoints/{spec.endpoint_id}/deployedModels/{spec.deployed_model_id}"
        predict_route = cs.get("predictRoute") or f"{prefix}:predict"
        health_route = cs.get("healthRoute") or prefix
        storage_uri = self._storage_copy(spec)
        parts = spec.endpoint_name.split("/")
        project = parts[1] if len(parts) > 3 else ""
        location = parts[3] if len(parts) > 3 else None
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "") else self.settings.host
        base = {**base, **emulator_env(f"http://{host}:{self.settings.port}", project, location)}
        env = build_container_env(spec, runtime, storage_uri, predict_route, health_route, base)
        return env, predict_route, health_route, storage_uri

    def _storage_copy(self, spec: DeployedModelSpec) -> str:
        if spec.artifact_dir is None or not Path(spec.artifact_dir).is_dir():
            return ""
        dest = self.artifacts.bucket_path(STORAGE_BUCKET) / spec.endpoint_id / spec.deployed_model_id
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(spec.artifact_dir, dest, symlinks=False)
        uri: str = self.artifacts.uri_for(dest)
        self.artifacts.publish(uri)  # the container reads it over the storage API: the store
        return uri

    def _cleanup_storage(self, spec: DeployedModelSpec) -> None:
        if spec.framework == CUSTOM:
            with contextlib.suppress(LoopmlError, OSError):  # OSError: the object store
                dest = self.artifacts.bucket_path(STORAGE_BUCKET) / spec.endpoint_id / spec.deployed_model_id
                if self.artifacts.remote is not None:
                    for uri in self.artifacts.list(self.artifacts.uri_for(dest) + "/"):
                        self.artifacts.remove(uri)
                shutil.rmtree(dest, ignore_errors=True)
