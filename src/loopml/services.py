"""Wires the services onto a Platform. Each subsystem adds its construction here, in dependency order.

Services are reached as typed attributes through `loopml.services.get(platform, Type)` or
directly from `platform.services[name]`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from loopml.platform import Platform

T = TypeVar("T")


def get(platform: Platform, name: str, kind: type[T]) -> T:
    service: Any = platform.services.get(name)
    if service is None:
        raise RuntimeError(f"service {name!r} is not configured on this platform")
    assert isinstance(service, kind), f"service {name!r} is {type(service)!r}, not {kind!r}"
    return service


def build(platform: Platform) -> None:
    """Construct every service. Keep one block per subsystem, in dependency order."""
    # -- registry (models, versions, aliases, endpoints' stored state) ---------------------
    from loopml.registry.endpoints import EndpointService
    from loopml.registry.evaluations import EvaluationService
    from loopml.registry.operations import OperationStore
    from loopml.registry.service import RegistryService

    platform.services["operations"] = OperationStore(platform.db)
    platform.services["registry"] = RegistryService(
        platform.db, platform.artifacts, platform.services["operations"]
    )
    platform.services["evaluations"] = EvaluationService(platform.db)
    platform.services["endpoints"] = EndpointService(
        platform.db, platform.services["registry"], platform.services["operations"], platform.services
    )
    # -- ingest / warehouse / sqlml ---------------------------------------------------------
    # warehouse (WH): built first in this block so its stop hook (closing DuckDB) runs last
    from loopml.warehouse import Warehouse

    warehouse = Warehouse(
        platform.settings.resolved_warehouse_path(),
        platform.artifacts,
        dedup_window_s=platform.settings.warehouse_dedup_window_s,
    )
    platform.services["warehouse"] = warehouse
    platform.on_stop("warehouse", warehouse.close)
    # sqlml (ML): CREATE/DROP/EXPORT MODEL and ML.* on the warehouse; bqml-* predictors for serving
    from loopml.serving.loaders import register_loader
    from loopml.sqlml.predictor import load_predictor
    from loopml.sqlml.service import SqlMLService

    sqlml = SqlMLService(warehouse, platform.artifacts, platform.services["registry"])
    sqlml.install()
    platform.services["sqlml"] = sqlml
    for _framework in ("bqml-kmeans", "bqml-linear", "bqml-logistic", "bqml-boosted"):
        register_loader(_framework, load_predictor)
    # ingest (INGEST): the warehouse and serving are looked up lazily (built later, or absent)
    from loopml.ingest import IngestService

    async def _ingest_predict(endpoint_name: str, instances: list[Any]) -> dict[str, Any]:
        serving = platform.services.get("serving")
        if serving is None:
            raise RuntimeError("no serving runtime on this platform")
        return await serving.predict(endpoint_name, instances)  # type: ignore[no-any-return]

    ingest = IngestService(
        platform.settings.ingest_log_path or platform.settings.resolved_home() / "ingest.db",
        default_project=platform.settings.default_project,
        warehouse=lambda: platform.services.get("warehouse"),
        predict=_ingest_predict,
    )
    platform.services["ingest"] = ingest
    platform.on_start("ingest", ingest.start)
    platform.on_stop("ingest", ingest.stop)
    # -- envs / images / training -----------------------------------------------------------
    # envs + images (IMG): venvs cached by hash under $LOOPML_HOME/envs, image catalog under
    # $LOOPML_HOME/images (the CLI builds into the same files), the /gcs view of the buckets
    from loopml.envs import EnvManager, GcsView
    from loopml.images import ImageService

    _settings = platform.settings
    envs = EnvManager(
        _settings.resolved_home() / "envs",
        cache_dir=_settings.uv_cache_dir,
        use_uv=_settings.envs_use_uv,
        offline=_settings.envs_offline,
    )
    platform.services["envs"] = envs
    gcs_view = GcsView(platform.artifacts.buckets_dir, _settings.gcs_mount)
    platform.services["gcs"] = gcs_view
    from loopml.images.docker import DockerEngine, check_engine_name, job_user

    docker = None
    if check_engine_name(_settings.container_engine) == "docker":
        docker = DockerEngine(_settings.resolved_home(), user=job_user(_settings.docker_user))
        # before jobs and replays start (and last on stop): no container of this home survives
        platform.on_start("docker-leftovers", docker.cleanup_hook)
        platform.on_stop("docker-leftovers", docker.cleanup_hook)
    platform.services["images"] = ImageService(
        _settings.resolved_home() / "images",
        envs,
        prebuilt_mode=_settings.prebuilt_envs,
        gcs=gcs_view,
        docker=docker,
    )
    if _settings.gcs_mount is not None:
        platform.on_start("gcs-mount", gcs_view.mount_hook)
    # managed datasets (DATASETS): tabular Vertex datasets over the store and the warehouse
    from loopml import datasets

    platform.services["datasets"] = datasets.build(platform)
    # training (JOBS): after envs/images, before serving; looks images/envs/registry up lazily
    from loopml import training

    platform.services["training"] = training.build(platform)
    # -- serving ----------------------------------------------------------------------------
    # serving (SERVE): replicas, router, autoscaler; the endpoints service calls it as its backend
    from loopml.serving.service import ServingService

    serving = ServingService(platform)
    platform.services["serving"] = serving
    platform.on_start("serving", serving.start)
    platform.on_stop("serving", serving.stop)
    # request/response logging and batch prediction (BATCH); stop hooks run before the
    # warehouse closes (hooks stop in reverse order), so queued log rows are written first
    from loopml.serving.batch import BatchService
    from loopml.serving.request_log import RequestLogger

    request_log = RequestLogger(
        lambda: platform.services.get("warehouse"),
        max_queue=platform.settings.request_log_queue_size,
        flush_s=platform.settings.request_log_flush_s,
    )
    platform.services["request_log"] = request_log
    platform.on_start("request_log", request_log.start)
    platform.on_stop("request_log", request_log.stop)
    batch = BatchService(
        platform.db,
        platform.artifacts,
        platform.settings,
        registry=lambda: platform.services.get("registry"),
        warehouse=lambda: platform.services.get("warehouse"),
        serving=lambda: platform.services.get("serving"),
    )
    platform.services["batch"] = batch
    platform.on_start("batch", batch.start)
    platform.on_stop("batch", batch.stop)
    # -- replay stored endpoints into the serving backend (after every service is built) -----
    # In the background once the server accepts connections (see Platform.on_ready).
    endpoints = platform.services["endpoints"]
    platform.on_ready("endpoints-replay", lambda: endpoints.replay(platform.stopping))
    return None
