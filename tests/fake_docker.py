"""A stand-in for the docker CLI and engine (the true outer boundary of `LOOPML_CONTAINER_ENGINE=docker`).

Tests install it as an executable `docker` first on PATH (`install(bin_dir, state_dir, images)`).
It implements the few commands loopml uses, strictly enough that a wrong command line fails:

- `info`: fails like a real CLI without a daemon when `<state>/daemon-down` exists, and hangs
  for a minute when `<state>/daemon-hangs` exists.
- `run`: accepts only `--rm`, `--name N` (required here, unique among existing containers),
  `--network host`, `--label K=V`, `--user U[:G]` (recorded only), `-e K=V` or `-e NAME` (as docker: the value is taken from the
  CLI's own environment, and a name that is not set there is left out), `-v /abs:/abs[:ro]` (the
  host path must exist), `--entrypoint X`; then IMAGE and arguments. IMAGE must be in the images file
  (`{"image": {"entrypoint": [...], "cmd": [...], "env": {...}, "workdir": "/abs"}}`), else it
  fails as a pull would (exit 125). The "container" is the image's process started with the
  image env plus the `-e` values only (none of the client's environment), in its own session;
  `docker run` waits for it, forwards SIGTERM/SIGINT, and exits with its code (128+signal when
  killed). Each container is `<state>/containers/<name>.json` (gone on exit with --rm), and every
  event is appended to `<state>/events.jsonl` (a run's with the CLI's whole command line, `cli`).
- `stop [-t N] NAME`, `kill NAME`, `rm [-f] NAME`,
  `ps [-a] [--filter label=K=V] [--filter name=REGEX] [--format {{.Names}}]`. While
  `<state>/rm-misses` holds a number N > 0, `rm -f` of an existing container does nothing and
  counts N down (as if the daemon created the container just after the rm).
- `build -t TAG [-f FILE] [--build-arg K=V] CONTEXT`: a tiny subset (see `cmd_build`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATE = Path(os.environ.get("FAKE_DOCKER_STATE", "/nonexistent"))
IMAGES = Path(os.environ.get("FAKE_DOCKER_IMAGES", "/nonexistent"))


def install(bin_dir: Path, state_dir: Path, images: dict[str, Any]) -> Path:
    """Write `bin_dir/docker` (runs this file with the state and images paths) and the images file."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "containers").mkdir(parents=True, exist_ok=True)
    images_file = state_dir / "images.json"
    images_file.write_text(json.dumps(images))
    exe = bin_dir / "docker"
    exe.write_text(
        "#!/bin/sh\n"
        f"FAKE_DOCKER_STATE='{state_dir}' FAKE_DOCKER_IMAGES='{images_file}' "
        f"exec '{sys.executable}' '{Path(__file__).resolve()}' \"$@\"\n"
    )
    exe.chmod(0o755)
    return exe


def events(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def containers(state_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in (state_dir / "containers").glob("*.json"):
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out


# -- the CLI ----------------------------------------------------------------------------------
def _event(**fields: Any) -> None:
    fields["t"] = time.time()
    with open(STATE / "events.jsonl", "a") as f:
        f.write(json.dumps(fields) + "\n")


def _die(message: str, code: int = 125) -> None:
    sys.stderr.write(message + "\n")
    sys.exit(code)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with open(STATE / ".lock", "w") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        yield


def _path(name: str) -> Path:
    return STATE / "containers" / f"{name}.json"


def _load(name: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(_path(name).read_text())
        return data
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def cmd_info(args: list[str]) -> None:
    _event(event="info")
    if (STATE / "daemon-hangs").exists():
        time.sleep(60)
    if (STATE / "daemon-down").exists():
        print("Client:\n Version:    28.2.2-fake")
        _die(
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
            "Is the docker daemon running?",
            1,
        )
    print(f"Server:\n Server Version: 28.2.2-fake\n Containers: {len(containers(STATE))}")


def cmd_run(args: list[str]) -> None:
    if (STATE / "daemon-down").exists():
        _die("docker: Cannot connect to the Docker daemon at unix:///var/run/docker.sock.", 125)
    rm, name, network, entrypoint, user = False, None, None, None, None
    labels: dict[str, str] = {}
    env: dict[str, str] = {}
    mounts: list[str] = []
    i = 0
    while i < len(args) and args[i].startswith("-"):
        flag = args[i]
        value = args[i + 1] if i + 1 < len(args) else None
        if flag == "--rm":
            rm = True
            i += 1
            continue
        if flag not in ("--name", "--network", "--label", "-e", "-v", "--entrypoint", "--user"):
            _die(f"unknown flag: {flag}")
        if value is None:
            _die(f"flag needs an argument: {flag}")
        assert value is not None
        if flag == "--name":
            name = value
        elif flag == "--network":
            network = value
        elif flag == "--entrypoint":
            entrypoint = value
        elif flag == "--user":
            # recorded only (this fake cannot switch users): USER[:GROUP], names or ids
            if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$", value):
                _die(f"invalid --user {value!r}")
            user = value
        elif flag == "--label":
            key, sep, val = value.partition("=")
            if not sep or not key:
                _die(f"invalid label {value!r}: loopml must give K=V")
            labels[key] = val
        elif flag == "-e":
            key, sep, val = value.partition("=")
            if not key or any(c.isspace() or c == "\0" for c in key):
                _die(f"invalid environment variable: {value!r}")
            if sep:
                env[key] = val
            elif key in os.environ:  # `-e NAME`: the value of NAME in the CLI's own environment
                env[key] = os.environ[key]
        elif flag == "-v":
            parts = value.split(":")
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
                _die(f"invalid volume specification: {value!r}")
            if not (parts[0].startswith("/") and parts[1].startswith("/")):
                _die(f"invalid volume specification: {value!r}: absolute paths expected")
            if not Path(parts[0]).exists():
                _die(f"invalid mount config: bind source path does not exist: {parts[0]}")
            mounts.append(value)
        i += 2
    if i >= len(args):
        _die('"docker run" requires at least 1 argument.')
    image, rest = args[i], args[i + 1 :]
    if name is None:
        _die("this fake engine needs --name (loopml always names its containers)")
    assert name is not None
    if network != "host":
        _die(f"loopml must run containers with --network host, got {network!r}")
    images = json.loads(IMAGES.read_text())
    if image not in images:
        _die(
            f"Unable to find image '{image}' locally\ndocker: Error response from daemon: pull access "
            f"denied for {image}, repository does not exist or may require 'docker login'."
        )
    spec = images[image]
    if entrypoint is not None:
        argv = [entrypoint, *rest]
    else:
        argv = [*spec.get("entrypoint", []), *(rest or spec.get("cmd", []))]
    if not argv:
        _die("no command specified")
    cenv = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOSTNAME": name, **spec.get("env", {}), **env}
    with _locked():
        if _path(name).exists():
            _die(
                f'docker: Error response from daemon: Conflict. The container name "/{name}" is already in '
                "use. You have to remove (or rename) that container to be able to reuse that name."
            )
        child = subprocess.Popen(
            argv, env=cenv, cwd=spec.get("workdir") or "/", stdin=subprocess.DEVNULL, start_new_session=True
        )
        record = {
            "name": name,
            "image": image,
            "pid": child.pid,
            "status": "running",
            "labels": labels,
            "env": env,
            "mounts": mounts,
            "argv": argv,
            "rm": rm,
            "user": user,
        }
        _path(name).write_text(json.dumps(record))
    _event(
        event="run",
        name=name,
        image=image,
        argv=argv,
        labels=labels,
        mounts=mounts,
        cli=sys.argv[1:],
        env=env,
        user=user,
    )

    def forward(sig: int, _frame: Any) -> None:
        _signal(child.pid, sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    rc = child.wait()
    code = 128 - rc if rc < 0 else rc
    with _locked():
        if rm:
            _path(name).unlink(missing_ok=True)
        elif _path(name).exists():  # not removed meanwhile by `docker rm -f`
            record.update(status="exited", exit_code=code)
            _path(name).write_text(json.dumps(record))
    _event(event="exited", name=name, code=code)
    sys.exit(code)


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def cmd_stop(args: list[str]) -> None:
    grace = 10.0
    if args[:1] == ["-t"]:
        grace = float(int(args[1]))  # docker takes whole seconds only
        args = args[2:]
    if len(args) != 1:
        _die("usage: docker stop [-t N] NAME")
    record = _load(args[0])
    if record is None:
        _die(f"Error response from daemon: No such container: {args[0]}", 1)
    assert record is not None
    _event(event="stop", name=args[0], grace=grace)
    if record["status"] == "running":
        _signal(record["pid"], signal.SIGTERM)
        if not _wait_gone(record["pid"], grace):
            _signal(record["pid"], signal.SIGKILL)
            _wait_gone(record["pid"], 5)
    print(args[0])


def cmd_kill(args: list[str]) -> None:
    if len(args) != 1:
        _die("usage: docker kill NAME")
    record = _load(args[0])
    if record is None or record["status"] != "running":
        _die(f"Error response from daemon: cannot kill container: {args[0]}: not running", 1)
    assert record is not None
    _event(event="kill", name=args[0])
    _signal(record["pid"], signal.SIGKILL)
    print(args[0])


def cmd_rm(args: list[str]) -> None:
    force = "-f" in args
    names = [a for a in args if a != "-f"]
    if len(names) != 1:
        _die("usage: docker rm [-f] NAME")
    record = _load(names[0])
    if record is None:
        if force:
            return  # docker rm -f ignores missing containers
        _die(f"Error response from daemon: No such container: {names[0]}", 1)
    assert record is not None
    misses = STATE / "rm-misses"
    if force and misses.exists() and int(misses.read_text() or 0) > 0:
        # as if the daemon created this container just after the rm: it was not there yet
        misses.write_text(str(int(misses.read_text()) - 1))
        _event(event="rm-missed", name=names[0])
        return
    if record["status"] == "running" and _alive(record["pid"]):
        if not force:
            _die(f"Error response from daemon: cannot remove container {names[0]}: container is running", 1)
        _signal(record["pid"], signal.SIGKILL)
        _wait_gone(record["pid"], 5)
    with _locked():
        _path(names[0]).unlink(missing_ok=True)
    _event(event="rm", name=names[0])
    print(names[0])


def cmd_ps(args: list[str]) -> None:
    show_all, label, fmt, name_re = False, None, None, None
    i = 0
    while i < len(args):
        if args[i] == "-a":
            show_all = True
            i += 1
        elif args[i] == "--filter" and args[i + 1].startswith("label="):
            label = args[i + 1][len("label=") :]
            i += 2
        elif args[i] == "--filter" and args[i + 1].startswith("name="):
            name_re = args[i + 1][len("name=") :]  # a regular expression searched in the name
            i += 2
        elif args[i] == "--format":
            fmt = args[i + 1]
            i += 2
        else:
            _die(f"unknown flag: {args[i]}")
    if fmt != "{{.Names}}":
        _die("this fake engine only prints --format {{.Names}}")
    for name, record in sorted(containers(STATE).items()):
        running = record["status"] == "running" and _alive(record["pid"])
        if not running and not show_all:
            continue
        if name_re is not None and not re.search(name_re, name):
            continue
        if label is not None:
            key, _, val = label.partition("=")
            if record["labels"].get(key) != val:
                continue
        print(name)


def cmd_build(args: list[str]) -> None:
    """`build -t TAG... [-f FILE] [--build-arg K=V...] CONTEXT`: registers TAG as an image whose
    process runs in CONTEXT with the Dockerfile's exec-form ENTRYPOINT/CMD and its `ENV K=V`
    (`python`/`python3` stand for this interpreter). Any other instruction but FROM, WORKDIR,
    COPY, EXPOSE and ARG is refused, so a test cannot rely on more than that."""
    tags, dockerfile, rest = [], None, []
    i = 0
    while i < len(args):
        if args[i] == "-t":
            tags.append(args[i + 1])
            i += 2
        elif args[i] == "-f":
            dockerfile = args[i + 1]
            i += 2
        elif args[i] == "--build-arg":
            if "=" not in args[i + 1]:
                _die(f"invalid --build-arg {args[i + 1]!r}")
            i += 2
        elif args[i].startswith("-"):
            _die(f"unknown flag: {args[i]}")
        else:
            rest.append(args[i])
            i += 1
    if len(rest) != 1 or not tags:
        _die('"docker build" requires exactly 1 argument and at least one -t')
    context = Path(rest[0]).resolve()
    spec: dict[str, Any] = {"workdir": str(context), "env": {}}
    for line in Path(dockerfile or context / "Dockerfile").read_text().splitlines():
        word, _, value = line.strip().partition(" ")
        word = word.upper()
        if word in ("ENTRYPOINT", "CMD"):
            argv = json.loads(value)
            if argv and argv[0] in ("python", "python3"):
                argv[0] = sys.executable
            spec[word.lower()] = argv
        elif word == "ENV":
            for item in value.split():
                key, _, val = item.partition("=")
                spec["env"][key] = val
        elif word and not word.startswith("#") and word not in ("FROM", "WORKDIR", "COPY", "EXPOSE", "ARG"):
            _die(f"this fake engine cannot build {word}")
    with _locked():
        images = json.loads(IMAGES.read_text())
        for tag in tags:
            images[tag] = spec
        IMAGES.write_text(json.dumps(images))
    _event(event="build", tags=tags, context=str(context))
    print(f"Successfully tagged {tags[0]}")


def main() -> None:
    args = sys.argv[1:]
    if not args:
        _die("usage: docker COMMAND")
    commands = {"info": cmd_info, "run": cmd_run, "stop": cmd_stop, "kill": cmd_kill}
    commands.update({"rm": cmd_rm, "ps": cmd_ps, "build": cmd_build})
    if args[0] not in commands:
        _die(f"docker: '{args[0]}' is not a docker command (in this fake).")
    commands[args[0]](args[1:])


if __name__ == "__main__":
    main()
