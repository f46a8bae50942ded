"""The running platform: settings, stores and services, built once by an entry point.

Entry points (`loopml server`, tests) call `Platform.open(settings)`; services are constructed
here and handed their dependencies explicitly. Subsystems register start/stop hooks for their
background workers; `start()` runs them in order and `stop()` in reverse. "Ready" hooks
(`on_ready`) run after the start hooks; the server runs them in the background once it accepts
connections (replaying deployments can need the server itself: a custom container that loads its
model over loopml's Cloud Storage API), and `/healthz` answers 200 only when they are done.

Dependency order of the packages (a module imports only from earlier ones):
errors/config/logs/refs → metadata → artifacts → envs → registry → ingest → warehouse → sqlml
→ datasets → training → serving → monitoring → pipelines → api/client/cli/ui.
(The registry sits before the data plane because SQL models and jobs register into it.)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from loopml.artifacts import ArtifactStore
from loopml.artifacts.remote import parse_options
from loopml.config import Settings
from loopml.metadata import Database

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None] | None]


class Platform:
    def __init__(self, settings: Settings) -> None:
        settings.ensure_dirs()
        self.settings = settings
        self.db = Database(settings.resolved_database_url())
        options, url = settings.object_store_options, settings.object_store_url
        self.artifacts = ArtifactStore(
            settings.resolved_artifact_root(),
            url.get_secret_value() if url is not None else None,
            parse_options(options.get_secret_value() if options is not None else None),
        )
        self._start_hooks: list[tuple[str, Hook]] = []
        self._stop_hooks: list[tuple[str, Hook]] = []
        self._ready_hooks: list[tuple[str, Hook]] = []
        self._ready_task: asyncio.Task[None] | None = None
        self.services: dict[str, Any] = {}
        # Set when the platform begins to stop; long ready hooks check it between steps.
        self.stopping = threading.Event()
        self.ready = asyncio.Event()

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

    def on_ready(self, name: str, hook: Hook) -> None:
        """A hook run after every start hook; the server does not report healthy before it ends."""
        self._ready_hooks.append((name, hook))

    async def start(self, *, background: bool = False) -> None:
        """Run the start hooks, then the ready hooks (in a background task when `background`)."""
        for name, hook in self._start_hooks:
            log.debug("starting %s", name)
            result = hook()
            if inspect.isawaitable(result):
                await result
        if background:
            self._ready_task = asyncio.create_task(self._run_ready_hooks())
        else:
            await self._run_ready_hooks()

    async def _run_ready_hooks(self) -> None:
        for name, hook in self._ready_hooks:
            if self.stopping.is_set():
                return
            log.debug("readying %s", name)
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("error while readying %s", name)
        self.ready.set()

    async def stop(self) -> None:
        self.stopping.set()
        if self._ready_task is not None and not self._ready_task.done():
            # Ready hooks stop at their next step; wait (bounded) so none races the stop hooks.
            done, _ = await asyncio.wait({self._ready_task}, timeout=60)
            if not done:
                log.warning("start-up work still running at shutdown; stopping anyway")
        for name, hook in reversed(self._stop_hooks):
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("error while stopping %s", name)
        self.db.dispose()
