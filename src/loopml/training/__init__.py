"""Custom training: CustomJobs and TrainingPipelines run as supervised child processes.

`build(platform)` constructs the TrainingService, its job runner and runtime resolver, and
registers the runner's start/stop hooks; `services.build` calls it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loopml.training.service import TrainingService

if TYPE_CHECKING:
    from loopml.platform import Platform

__all__ = ["TrainingService", "build"]


def build(platform: Platform) -> TrainingService:
    from loopml.training.contract import server_url
    from loopml.training.runner import JobRunner
    from loopml.training.runtime import RuntimeResolver
    from loopml.training.store import JobStore

    settings = platform.settings
    logs_dir = settings.resolved_home() / "logs" / "jobs"
    resolver = RuntimeResolver(platform.artifacts, platform.services)
    runner = JobRunner(
        platform.db,
        JobStore(platform.db),
        resolver,
        logs_dir=logs_dir,
        url=server_url(settings.host, settings.port),
        extra_env=lambda: _gcs_view_env(platform),
        grace_s=settings.job_kill_grace_s,
    )
    service = TrainingService(platform.db, runner, resolver, services=platform.services, logs_dir=logs_dir)
    platform.on_start("training", runner.start)
    platform.on_stop("training", runner.stop)
    return service


def _gcs_view_env(platform: Platform) -> dict[str, str]:
    """Extra variables from the image service for the Vertex `/gcs/` view, if it offers them."""
    images = platform.services.get("images")
    hook = getattr(images, "gcs_view_env", None)
    if callable(hook):
        return {str(k): str(v) for k, v in dict(hook()).items()}
    return {}
