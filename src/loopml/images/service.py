"""`ImageService`: build images without Docker, keep the catalog, resolve URIs to runtimes.

`resolve(uri)` is the contract with training and serving: a catalog image (`name:tag`, registry
URI, `@sha256:` digest) or a prebuilt Vertex image becomes an `ImageRuntime` (snapshot root,
workdir, venv python, ENV, ENTRYPOINT/CMD, ports); any other URI gives None. Resolving may build
a missing environment (first use of a prebuilt image, or after `gc`), so call it off the event
loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loopml.envs.gcs import GcsView
from loopml.envs.manager import META, EnvManager, Progress
from loopml.errors import FailedPrecondition, InvalidArgument, NotFound
from loopml.images.builder import DockerfileBuild
from loopml.images.catalog import Catalog, ImageRef, parse_ref
from loopml.images.docker import DockerEngine
from loopml.images.prebuilt import Prebuilt, match_prebuilt
from loopml.images.runcmd import IMAGE_DIR
from loopml.images.runtime import ImageRuntime
from loopml.refs import now, rfc3339

log = logging.getLogger(__name__)

UsageCheck = Callable[[list[str]], list[str]]
"""Given an image's references (tags and digest URI), describe what uses it (deployments, jobs)."""


class ImageService:
    def __init__(
        self,
        root: Path,
        envs: EnvManager,
        *,
        prebuilt_mode: str = "isolated",
        gcs: GcsView | None = None,
        docker: DockerEngine | None = None,
    ) -> None:
        if prebuilt_mode not in ("isolated", "host"):
            raise InvalidArgument(f"prebuilt_envs must be 'isolated' or 'host', not {prebuilt_mode!r}.")
        self.catalog = Catalog(root)
        self.envs = envs
        self.prebuilt_mode = prebuilt_mode
        self._usage_checks: list[UsageCheck] = []
        self.gcs = gcs
        self.docker = docker
        """The Docker engine when `LOOPML_CONTAINER_ENGINE=docker` (see `docker_for`)."""

    def gcs_view_env(self) -> dict[str, str]:
        """Variables for job and replica processes: `LOOPML_GCS_ROOT` (and the mount when made)."""
        return self.gcs.env() if self.gcs is not None else {}

    def gcs_path(self, uri: str) -> str:
        """`gs://B/P` → the local path of the `/gcs/B/P` view (unchanged without a view)."""
        return self.gcs.gcs_path(uri) if self.gcs is not None else uri

    def add_usage_check(self, check: UsageCheck) -> None:
        self._usage_checks.append(check)

    # -- build -----------------------------------------------------------------------------
    def build(
        self,
        context: Path,
        tags: Sequence[str],
        *,
        dockerfile: Path | None = None,
        build_args: dict[str, str] | None = None,
        allow_unsupported: bool = False,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        context = Path(context).expanduser().resolve()
        if not context.is_dir():
            raise InvalidArgument(f"Build context {context} is not a directory.")
        refs = [parse_ref(t) for t in tags]
        for ref in refs:
            if ref.digest or ref.tag is None:
                raise InvalidArgument(f"Cannot tag an image as {ref}: use NAME[:TAG].")
        dockerfile = (dockerfile or context / "Dockerfile").expanduser()
        if not dockerfile.is_absolute() and not dockerfile.exists():
            dockerfile = context / dockerfile
        if not dockerfile.is_file():
            raise InvalidArgument(f"Dockerfile {dockerfile} not found.")
        started = time.monotonic()
        build_dir = self.catalog.root / f".tmp-{secrets.token_hex(6)}"
        try:
            job = DockerfileBuild(
                context,
                dockerfile.read_text(),
                build_dir,
                build_args=build_args,
                allow_unsupported=allow_unsupported,
                base_lookup=self._base_lookup,
                progress=progress,
            )
            state = job.run()
            if progress:
                progress(
                    f"environment: {len(state.env_lines)} requirement lines, {len(state.env_packages)} packages"
                )
            env_dir = self._ensure_env(build_dir, state.config(), progress)
            config = state.config()
            env_spec: Any = self.envs.get(env_dir.name).get("spec") or {}
            config.update(
                env_digest=env_dir.name,
                python_version=env_spec.get("python_version"),
                dockerfile=str(dockerfile),
                context=str(context),
                engine="loopml",
            )
            requested = config.get("python_requested")
            got = str(config.get("python_version") or "").split("-")[-1]
            if requested and not (got == requested or got.startswith(f"{requested}.")):
                note = (
                    f"FROM asks for Python {requested}, which is not installed here; "
                    f"the image runs on Python {got} (install it with `uv python install {requested}`)."
                )
                config["warnings"].append(note)
                if progress:
                    progress(f"warning: {note}")
            for line, workdir, command in state.deferred:
                self._run_deferred(build_dir, config, env_dir, line, workdir, command, progress)
            digest = self._digest(build_dir / "root", config)
            config.update(digest=f"sha256:{digest}", created=rfc3339(now()))
            config["build_seconds"] = round(time.monotonic() - started, 3)
            config["size_bytes"] = sum(
                p.stat().st_size for p in (build_dir / "root").rglob("*") if p.is_file()
            )
            (build_dir / "image.json").write_text(json.dumps(config, indent=2))
            self.catalog.add(build_dir, digest)
        except BaseException:
            shutil.rmtree(build_dir, ignore_errors=True)
            raise
        for ref in refs:
            self.catalog.tag(ref, digest)
        return self.catalog.config(digest)

    def _ensure_env(self, image_dir: Path, config: dict[str, Any], progress: Progress | None) -> Path:
        lines = [line.replace(IMAGE_DIR, str(image_dir)) for line in config.get("env_requirements") or []]
        packages = [image_dir / p for p in config.get("env_packages") or []]
        return self.envs.ensure(
            lines, local_packages=packages, python=config.get("python_requested"), progress=progress
        )

    def _run_deferred(
        self,
        build_dir: Path,
        config: dict[str, Any],
        env_dir: Path,
        line: int,
        workdir: str,
        command: str,
        progress: Progress | None,
    ) -> None:
        runtime = self._runtime(build_dir, config, env_dir, "<building>", None)
        cwd = Path(runtime.host_path(workdir)) if workdir != "/" else runtime.root
        cwd = cwd if cwd.is_dir() else runtime.root
        if progress:
            progress(f"RUN (line {line}, on the host in {cwd}): {command}")
        proc = subprocess.run(
            ["/bin/sh", "-c", command], cwd=cwd, env=runtime.process_env(), capture_output=True, text=True
        )
        out = deque((proc.stdout + proc.stderr).splitlines(), maxlen=20)
        for text in out:
            if progress:
                progress(text)
        if proc.returncode != 0:
            raise FailedPrecondition(
                f"Dockerfile line {line}: RUN {command!r} failed with exit {proc.returncode}:\n"
                + "\n".join(out)
            )

    @staticmethod
    def _digest(root: Path, config: dict[str, Any]) -> str:
        h = hashlib.sha256()
        for key in ("base", "workdir", "env", "labels", "entrypoint", "cmd", "exposed_ports", "env_digest"):
            h.update(json.dumps([key, config.get(key)], sort_keys=True).encode())
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and not path.is_symlink():
                h.update(f"{rel}\0{path.stat().st_mode & 0o777:o}\0".encode())
                h.update(hashlib.sha256(path.read_bytes()).digest())
            elif path.is_dir():
                h.update(f"{rel}/\0".encode())
        return h.hexdigest()

    def _base_lookup(self, image: str) -> tuple[dict[str, Any], Path | None, Path | None] | None:
        try:
            digest = self.catalog.find_digest(image)
        except InvalidArgument:
            digest = None
        if digest:
            config = self.catalog.config(digest)
            path = Path(config["path"])
            return config, path / "root", path / "pkgs"
        pre = match_prebuilt(image)
        if pre is not None:
            return {"python_requested": pre.python, "env_requirements": list(pre.requirements)}, None, None
        return None

    # -- catalog ---------------------------------------------------------------------------
    def get(self, ref: str) -> dict[str, Any]:
        digest = self.catalog.find_digest(ref)
        if digest is None:
            raise NotFound(f"Image {ref!r} not found; `loopml images list` shows the catalog.")
        return self.catalog.config(digest)

    def list_images(self) -> list[dict[str, Any]]:
        return [self.catalog.config(d) for d in self.catalog.digests()]

    def delete(self, ref: str, *, force: bool = False) -> dict[str, Any]:
        """Remove a tag (or, for a digest, every tag); the image goes when no tag is left."""
        config = self.get(ref)
        digest = config["digest"][len("sha256:") :]
        parsed: ImageRef | None = None
        try:
            parsed = parse_ref(ref)
        except InvalidArgument:
            parsed = None
        by_digest = parsed is None or parsed.digest is not None or parsed.key not in config["tags"]
        remove_tags = config["tags"] if by_digest else [parsed.key]  # type: ignore[union-attr]
        remaining = [t for t in config["tags"] if t not in remove_tags]
        if not remaining and not force:
            users = [u for check in self._usage_checks for u in check([*config["tags"], config["digest"]])]
            if users:
                raise FailedPrecondition(
                    f"Image {ref} is in use by {', '.join(users)}; undeploy or finish those first (or force)."
                )
        for tag in remove_tags:
            self.catalog.untag(parse_ref(tag))
        if not remaining:
            self.catalog.remove(digest)
        return {"digest": config["digest"], "untagged": remove_tags, "deleted": not remaining}

    def gc(self, keep_days: float = 30.0) -> dict[str, Any]:
        """Delete envs no image uses and not used for `keep_days`, and stale build dirs."""
        in_use = {str(c.get("env_digest")) for c in self.list_images()}
        for child in self.catalog.root.glob(".tmp-*"):
            if child.stat().st_mtime < time.time() - 3600:
                shutil.rmtree(child, ignore_errors=True)
        removed = self.envs.gc(keep_days, in_use)
        return {"removed_envs": removed, "kept_envs": sorted(in_use)}

    # -- resolution ------------------------------------------------------------------------
    def resolve(self, image_uri: str, *, progress: Progress | None = None) -> ImageRuntime | None:
        """The runtime for an image URI: catalog image, prebuilt Vertex image, or None."""
        try:
            digest = self.catalog.find_digest(image_uri)
        except InvalidArgument:
            digest = None
        if digest is not None:
            config = self.catalog.config(digest)
            image_dir = Path(config["path"])
            env_dir = self.envs.root / str(config.get("env_digest"))
            if not (env_dir / META).is_file():
                log.info("rebuilding the environment of image %s", image_uri)
                env_dir = self._ensure_env(image_dir, config, progress)
            return self._runtime(image_dir, config, env_dir, image_uri, digest)
        pre = match_prebuilt(image_uri)
        if pre is not None:
            return self._prebuilt_runtime(pre, progress)
        return None

    def _runtime(
        self, image_dir: Path, config: dict[str, Any], env_dir: Path, uri: str, digest: str | None
    ) -> ImageRuntime:
        root = image_dir / "root"
        workdir = str(config.get("workdir") or "/")
        host_workdir = root.joinpath(*[p for p in workdir.split("/") if p])
        return ImageRuntime(
            uri=uri,
            root=root,
            workdir=host_workdir,
            python=env_dir / "bin" / "python",
            bin_dir=env_dir / "bin",
            env=dict(config.get("env") or {}),
            entrypoint=list(config.get("entrypoint") or []),
            cmd=list(config.get("cmd") or []),
            exposed_ports=[int(p) for p in config.get("exposed_ports") or []],
            digest=digest,
            container_workdir=workdir,
            env_dir=env_dir,
            labels=dict(config.get("labels") or {}),
            requirements=[
                line.replace(IMAGE_DIR, str(image_dir)) for line in config.get("env_requirements") or []
            ],
            local_packages=[image_dir / p for p in config.get("env_packages") or []],
            python_request=config.get("python_requested"),
        )

    def _prebuilt_runtime(self, pre: Prebuilt, progress: Progress | None) -> ImageRuntime:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", pre.uri)[:120]
        root = self.catalog.root / "prebuilt" / slug
        root.mkdir(parents=True, exist_ok=True)
        if self.prebuilt_mode == "host":
            python = Path(os.path.abspath(sys.executable))
            env_dir = Path(sys.prefix)
        else:
            env_dir = self.envs.ensure(list(pre.requirements), python=pre.python, progress=progress)
            python = env_dir / "bin" / "python"
        return ImageRuntime(
            uri=pre.uri,
            root=root,
            workdir=root,
            python=python,
            bin_dir=python.parent,
            prebuilt=pre.framework,
            env_dir=env_dir,
            labels={"loopml.prebuilt.kind": pre.kind},
            requirements=list(pre.requirements),
            python_request=pre.python,
        )

    # -- docker ----------------------------------------------------------------------------
    def docker_for(self, image_uri: str) -> DockerEngine | None:
        """The Docker engine that runs `image_uri`, or None when loopml runs it itself: with
        `LOOPML_CONTAINER_ENGINE=docker`, images that are neither in the catalog nor prebuilt."""
        if self.docker is None or not image_uri:
            return None
        try:
            if self.catalog.find_digest(image_uri) is not None:
                return None
        except InvalidArgument:
            pass
        if match_prebuilt(image_uri) is not None:
            return None
        return self.docker

    @staticmethod
    def docker_available() -> bool:
        docker = shutil.which("docker")
        if not docker:
            return False
        return subprocess.run([docker, "info"], capture_output=True, timeout=20).returncode == 0
