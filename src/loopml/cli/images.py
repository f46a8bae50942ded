"""`loopml images`: build images without Docker, list, describe, delete, resolve, gc.

Builds run here, in the CLI process, like `docker build`: the snapshot and the environment are
written into `$LOOPML_HOME` (images/ and envs/), which the server reads; no server is needed.
`gcloud builds submit --tag URI` becomes `loopml images build -t URI .`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from loopml.cli._common import JSON, Column, cli_errors, fail, output, print_fields, print_json

if TYPE_CHECKING:
    from loopml.images import ImageService

images_app = typer.Typer(
    help="Images without Docker: Dockerfile builds, catalog, prebuilt images.", no_args_is_help=True
)

HOME = typer.Option(None, "--home", help="State directory (default ~/.loopml; LOOPML_HOME).")


def _short_digest(row: dict[str, Any]) -> str:
    return str(row.get("digest") or "").removeprefix("sha256:")[:12]


def _size(row: dict[str, Any]) -> str:
    size = float(row.get("size_bytes") or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


IMAGE_COLUMNS: list[Column] = [
    ("TAGS", "tags"),
    ("DIGEST", _short_digest),
    ("BASE", "base"),
    ("PYTHON", "python_version"),
    ("ENV", "env_digest"),
    ("SIZE", _size),
    ("CREATED", "created"),
]


def register(app: typer.Typer) -> None:
    app.add_typer(images_app, name="images")


def _service(home: Path | None) -> ImageService:
    from loopml.config import Settings
    from loopml.envs import EnvManager, GcsView
    from loopml.images import ImageService

    settings = Settings.from_env(home=home)
    settings.ensure_dirs()
    envs = EnvManager(
        settings.resolved_home() / "envs",
        cache_dir=settings.uv_cache_dir,
        use_uv=settings.envs_use_uv,
        offline=settings.envs_offline,
    )
    gcs = GcsView(settings.resolved_artifact_root() / "buckets", settings.gcs_mount)
    return ImageService(
        settings.resolved_home() / "images", envs, prebuilt_mode=settings.prebuilt_envs, gcs=gcs
    )


def _build_args(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            fail(f"--build-arg {item!r} must look like KEY=VALUE")
        out[key] = value if sep else os.environ.get(key, "")
    return out


@images_app.command("build")
def build(
    context: Path = typer.Argument(Path("."), help="Build context directory."),
    tag: list[str] = typer.Option(..., "--tag", "-t", help="NAME[:TAG] or a registry URI; repeatable."),
    file: Path = typer.Option(None, "--file", "-f", help="Dockerfile (default CONTEXT/Dockerfile)."),
    build_arg: list[str] = typer.Option([], "--build-arg", help="KEY=VALUE for ARG; repeatable."),
    allow_unsupported: bool = typer.Option(
        False,
        "--allow-unsupported",
        help="Run RUN commands loopml cannot interpret on the host, in the snapshot.",
    ),
    engine: str = typer.Option(
        "loopml", "--engine", help="loopml (no Docker) or docker (needs a running engine)."
    ),
    as_json: bool = JSON,
    home: Path = HOME,
) -> None:
    """Build an image from a Dockerfile: a snapshot of the context plus a cached Python env."""
    if engine == "docker":
        _docker_build(context, tag, file, build_arg)
        return
    if engine != "loopml":
        fail(f"unknown engine {engine!r}: use loopml or docker")
    from rich.console import Console
    from rich.text import Text

    console = Console(stderr=True)
    tail: deque[str] = deque(maxlen=6)
    with cli_errors():
        service = _service(home)
        with console.status("building", spinner="dots") as status:

            def progress(line: str) -> None:
                tail.append(line[:160])
                if line.startswith("warning:"):
                    console.print(Text(line, style="yellow"))
                status.update(Text("building image\n" + "\n".join(tail), style="dim"))

            config = service.build(
                context,
                tag,
                dockerfile=file,
                build_args=_build_args(build_arg),
                allow_unsupported=allow_unsupported,
                progress=progress,
            )
    if as_json:
        print_json(config)
        return
    typer.echo(f"Built {config['digest']} in {config['build_seconds']:.1f}s")
    for t in config["tags"]:
        typer.echo(f"Tagged {t}")


def _docker_build(context: Path, tags: list[str], file: Path | None, build_args: list[str]) -> None:
    from loopml.images import ImageService

    if not ImageService.docker_available():
        fail("no Docker engine is running (`docker info` failed); use the default --engine loopml")
    cmd = [shutil.which("docker") or "docker", "build"]
    for t in tags:
        cmd += ["-t", t]
    if file:
        cmd += ["-f", str(file)]
    for item in build_args:
        cmd += ["--build-arg", item]
    cmd.append(str(context))
    code = subprocess.call(cmd)
    if code == 0:
        typer.echo(
            "The image is in Docker, not in loopml's catalog: a server started with "
            "LOOPML_CONTAINER_ENGINE=docker runs it for jobs and deployments.",
            err=True,
        )
    raise typer.Exit(code)


@images_app.command("list")
def list_images(as_json: bool = JSON, home: Path = HOME) -> None:
    """Images in the catalog."""
    with cli_errors():
        rows = _service(home).list_images()
    output(rows, as_json, IMAGE_COLUMNS)


@images_app.command("describe")
def describe(
    ref: str = typer.Argument(..., help="NAME[:TAG], registry URI, @sha256: digest or prefix."),
    as_json: bool = JSON,
    home: Path = HOME,
) -> None:
    """An image's config: tags, digest, workdir, env, entrypoint/cmd, ports, environment."""
    with cli_errors():
        config = _service(home).get(ref)
    if as_json:
        print_json(config)
        return
    print_fields(
        config,
        [
            ("Digest", "digest"),
            ("Tags", "tags"),
            ("Base", "base"),
            ("Python", "python_version"),
            ("Workdir", "workdir"),
            ("Entrypoint", "entrypoint"),
            ("Cmd", "cmd"),
            ("Env", "env"),
            ("Exposed ports", "exposed_ports"),
            ("Labels", "labels"),
            ("Requirements", "env_requirements"),
            ("Env digest", "env_digest"),
            ("Warnings", "warnings"),
            ("Created", "created"),
            ("Path", "path"),
        ],
    )


@images_app.command("delete")
def delete(
    ref: str = typer.Argument(..., help="A tag removes that tag; a digest removes the image."),
    force: bool = typer.Option(False, "--force", help="Delete even when something uses it."),
    as_json: bool = JSON,
    home: Path = HOME,
) -> None:
    """Untag an image; the image and its snapshot go when no tag is left (envs go with gc)."""
    with cli_errors():
        result = _service(home).delete(ref, force=force)
    if as_json:
        print_json(result)
        return
    for t in result["untagged"]:
        typer.echo(f"Untagged {t}")
    if result["deleted"]:
        typer.echo(f"Deleted {result['digest']}")
        typer.echo("Jobs or deployed models that name this image cannot start until it is built again.")


@images_app.command("resolve")
def resolve(
    uri: str = typer.Argument(..., help="Image URI as a job or model would name it."),
    as_json: bool = JSON,
    home: Path = HOME,
) -> None:
    """What loopml runs for an image URI (catalog image or prebuilt Vertex image); builds its env if needed."""
    with cli_errors():
        runtime = _service(home).resolve(uri)
        if runtime is None:
            fail(
                f"{uri} is neither a built image nor a known prebuilt image; build it with `loopml images build -t {uri} .`"
            )
    data = runtime.describe()
    if as_json:
        print_json(data)
        return
    print_fields(data, [(k, k) for k in data])


@images_app.command("gc")
def gc(
    keep_days: float = typer.Option(30.0, "--keep-days", help="Keep envs used within this many days."),
    as_json: bool = JSON,
    home: Path = HOME,
) -> None:
    """Delete cached environments no image uses and not used for --keep-days."""
    with cli_errors():
        result = _service(home).gc(keep_days)
    if as_json:
        print_json(result)
        return
    typer.echo(
        f"Removed {len(result['removed_envs'])} environments; {len(result['kept_envs'])} in use by images."
    )


@images_app.command("envs")
def envs(as_json: bool = JSON, home: Path = HOME) -> None:
    """Cached environments (digest, Python, packages, last use)."""
    with cli_errors():
        rows = _service(home).envs.list_envs()
    output(
        rows,
        as_json,
        [
            ("DIGEST", "digest"),
            ("PYTHON", lambda r: (r.get("spec") or {}).get("python_version")),
            ("PACKAGES", lambda r: len(r.get("freeze") or [])),
            ("INSTALLER", "installer"),
            ("BUILD S", "build_seconds"),
            ("PATH", "path"),
        ],
    )
