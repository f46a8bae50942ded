"""A custom serving container run by a Docker engine (`LOOPML_CONTAINER_ENGINE=docker`).

Everything but the start and the stop is `ContainerReplica`'s: the port (free on the host, as
the container shares the host's network), the health checks, forwarding, restarts. The process
the replica supervises is `docker run --rm --name loopml-replica-<home hash>-<id> …`; its output goes to the
replica's log. Stopping runs `docker stop` and `docker rm -f` by name, so an undeploy, a restart
or a server stop never leaves the container running.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from loopml.images.docker import DockerEngine, DockerRun, env_for_container
from loopml.serving.containers import ContainerReplica


class DockerContainerReplica(ContainerReplica):
    kind = "docker-container"

    def __init__(
        self,
        replica_id: str,
        log_path: Path,
        start_timeout: float,
        *,
        engine: DockerEngine,
        run: DockerRun,
        env: dict[str, str],
        predict_route: str,
        health_route: str,
        meta: dict[str, str],
        preferred_port: int | None = None,
    ) -> None:
        super().__init__(
            replica_id,
            log_path,
            start_timeout,
            argv=[*run.command, *run.args],
            env=env,
            cwd=None,
            predict_route=predict_route,
            health_route=health_route,
            meta=meta,
            preferred_port=preferred_port,
        )
        self.engine = engine
        self.run = run
        self.container = engine.name("replica", replica_id)

    def _launch(self, argv: list[str], env: dict[str, str]) -> None:
        # `argv` is command + args with a taken declared port rewritten (same length).
        n = len(self.run.command)
        run = dataclasses.replace(self.run, command=argv[:n], args=argv[n:], env=env_for_container(env))
        command = self.engine.run_command(self.container, run)
        self.engine.remove(self.container)  # one left by a run that died with its docker client
        # the container's variables travel in the CLI's environment; the log shows names only
        self._spawn(command.argv, command.env, None, shown=command.shown)

    def stop(self, timeout: float = 5.0) -> None:
        self.state = "stopped"
        self.close()
        if self.proc is not None:
            self.engine.stop(self.container, timeout)
        super().stop(timeout)

    def status(self) -> dict[str, Any]:
        out = super().status()
        out.setdefault("info", {})["container"] = self.container
        return out
