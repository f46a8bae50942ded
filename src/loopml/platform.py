"""The running platform: settings, stores and services, built once by an entry point.

Entry points (`loopml server`, tests) call `Platform.open(settings)`; services are constructed
here and handed their dependencies explicitly. Subsystems register start/stop hooks for their
background workers; `start()` runs them in order and `stop()` in reverse.

Dependency order of the packages (a module imports only from earlier ones):
errors/config/logs/refs → metadata → artifacts → envs → registry → ingest → warehouse → sqlml
→ training → serving → monitoring → pipelines → api/client/cli/ui.
(The registry sits before the data plane because SQL models and jobs register into it.)
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from loopml.artifacts import ArtifactStore
from loopml.config import Settings
from loopml.metadata import Database

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None] | None]


class Platform:
    def __init__(self, settings: Settings) -> None:
        settings.ensure_dirs()
        self.settings = settings
        self.db = Database(settings.resolved_database_url())
        self.artifacts = ArtifactStore(settings.resolved_artifact_root())
        self._start_hooks: list[tuple[str, Hook]] = []
        self._stop_hooks: list[tuple[str, Hook]] = []
        self.services: dict[str, Any] = {}

    @classmethod
    def open(cls, settings: Settings, *, migrate: bool = True) -> Platform:
        platform = cls(settings)
        if migrate:
            platform.db.migrate()
        from loopml import services

        services.build(platform)
        return platform

    def on_start(self, name: str, hook: Hook) -> None:
        self._start_hooks.append((name, hook))

    def on_stop(self, name: str, hook: Hook) -> None:
        self._stop_hooks.append((name, hook))

    async def start(self) -> None:
        for name, hook in self._start_hooks:
            log.debug("starting %s", name)
            result = hook()
            if inspect.isawaitable(result):
                await result

    async def stop(self) -> None:
        for name, hook in reversed(self._stop_hooks):
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("error while stopping %s", name)
        self.db.dispose()
