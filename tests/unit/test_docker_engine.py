"""The `docker run` command line loopml emits, exactly, and the engine check's error message."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from loopml.errors import FailedPrecondition, InvalidArgument
from loopml.images.docker import (
    DockerEngine,
    DockerRun,
    check_engine_name,
    container_name,
    env_for_container,
    home_hash,
    job_user,
)
from loopml.serving.docker_replica import DockerContainerReplica
from tests import fake_docker


@pytest.fixture()
def engine(tmp_path: Path) -> DockerEngine:
    exe = fake_docker.install(tmp_path / "bin", tmp_path / "state", {})
    return DockerEngine(tmp_path / "home", binary=str(exe))


def test_run_command_with_command_args_env_and_mounts(engine: DockerEngine, tmp_path: Path) -> None:
    run = DockerRun(
        "gcr.io/p/trainer:v1",
        "job",
        command=["python", "-m", "trainer.task"],
        args=["--epochs", "3"],
        env={"AIP_MODEL_DIR": "gs://b/out/model/", "EMPTY": "", "SPACED": "a b=c"},
        mounts=[("/srv/buckets", "/gcs", False), ("/srv/copy", "/srv/copy", True)],
    )
    label = f"loopml.home={home_hash(tmp_path / 'home')}"
    assert engine.run_command("loopml-job-42", run).argv == [
        str(tmp_path / "bin" / "docker"),
        "run",
        "--rm",
        "--name",
        "loopml-job-42",
        "--network",
        "host",
        "--label",
        label,
        "--label",
        "loopml.kind=job",
        "-e",
        "AIP_MODEL_DIR",
        "-e",
        "EMPTY",
        "-e",
        "SPACED",
        "-v",
        "/srv/buckets:/gcs",
        "-v",
        "/srv/copy:/srv/copy:ro",
        "--entrypoint",
        "python",
        "gcr.io/p/trainer:v1",
        "-m",
        "trainer.task",
        "--epochs",
        "3",
    ]


def test_env_values_travel_in_the_cli_environment_never_on_the_command_line(engine: DockerEngine) -> None:
    secret = "s3cr3t-value-for-the-test"
    env = {
        "API_KEY": secret,
        "EMPTY": "",
        "HOME": "/root",
        "DOCKER_HOST_IN_CONTAINER": "x",
        "https_proxy": "p",
    }
    command = engine.run_command("n", DockerRun("img:1", "job", env=env))
    assert secret not in " ".join(command.argv) and secret not in command.shown
    assert command.argv[command.argv.index("API_KEY") - 1] == "-e"
    assert command.env["API_KEY"] == secret and command.env["EMPTY"] == ""
    # names the docker CLI reads itself keep the value form (its own HOME/DOCKER_*/proxy stay)
    assert "HOME=/root" in command.argv and "DOCKER_HOST_IN_CONTAINER=x" in command.argv
    assert "https_proxy=p" in command.argv
    assert command.env.get("HOME") == DockerEngine.client_env().get("HOME")
    assert "DOCKER_HOST_IN_CONTAINER" not in command.env and "https_proxy" not in command.env
    # the log line names every variable, with no value
    assert "-e HOME " in command.shown and "/root" not in command.shown and "=p" not in command.shown


def test_job_user_setting_and_the_user_flag(engine: DockerEngine) -> None:
    import os

    assert job_user(None) == f"{os.getuid()}:{os.getgid()}"  # default: the server's own ids
    assert job_user("") is None and job_user("  ") is None  # LOOPML_DOCKER_USER="": the image's
    assert job_user("1000:100") == "1000:100" and job_user("trainer") == "trainer"
    for bad in ("--privileged", "a b", "1:2:3", "x;y"):
        with pytest.raises(InvalidArgument, match="LOOPML_DOCKER_USER"):
            job_user(bad)
    argv = engine.run_command("n", DockerRun("img:1", "job", user="1000:100")).argv
    assert argv[argv.index("--user") + 1] == "1000:100" and argv.index("--user") < argv.index("img:1")
    assert "--user" not in engine.run_command("n", DockerRun("img:1", "replica")).argv


def test_vertex_command_and_args_semantics(engine: DockerEngine) -> None:
    def tail(command: list[str] | None = None, args: list[str] | None = None) -> list[str]:
        argv = engine.run_command("n", DockerRun("img:1", "replica", command or [], args or [])).argv
        return argv[argv.index("loopml.kind=replica") + 1 :]

    assert tail() == ["img:1"]  # ENTRYPOINT + CMD of the image
    assert tail(args=["--port", "9"]) == ["img:1", "--port", "9"]  # args replace CMD only
    assert tail(command=["/bin/server"]) == ["--entrypoint", "/bin/server", "img:1"]  # CMD dropped
    assert tail(command=["sh", "-c", "x y"], args=["a"]) == ["--entrypoint", "sh", "img:1", "-c", "x y", "a"]


@pytest.mark.parametrize("image", ["--privileged", "-v", "img name", "", "img\n", "a;b", "x@sha256:12"])
def test_image_references_that_docker_would_misread_are_refused(engine: DockerEngine, image: str) -> None:
    with pytest.raises(InvalidArgument, match="not a Docker image name"):
        engine.run_command("n", DockerRun(image, "job"))


@pytest.mark.parametrize(
    "image", ["img", "gcr.io/p/img:v1", "localhost:5000/a/b", f"us-docker.pkg.dev/p/r/i@sha256:{'a' * 64}"]
)
def test_image_references_accepted(engine: DockerEngine, image: str) -> None:
    assert engine.run_command("n", DockerRun(image, "job")).argv[-1] == image


def test_bad_env_names_and_mounts_are_refused(engine: DockerEngine) -> None:
    with pytest.raises(InvalidArgument, match="A=B"):
        engine.run_command("n", DockerRun("img", "job", env={"A=B": "1"}))
    with pytest.raises(InvalidArgument, match="absolute"):
        engine.run_command("n", DockerRun("img", "job", mounts=[("rel", "/x", True)]))


def test_names_labels_and_container_env() -> None:
    assert container_name("replica", "123-r0") == "loopml-replica-123-r0"
    assert container_name("job", "a/b c") == "loopml-job-a-b-c"
    home = Path("/x/home")
    assert DockerEngine(home).name("replica", "1-r0") == f"loopml-replica-{home_hash(home)[:12]}-1-r0"
    assert home_hash(Path("/x/home")) == home_hash(Path("/x/home/"))
    assert home_hash(Path("/x/home")) != home_hash(Path("/x/other"))
    assert env_for_container({"PATH": "/h", "A": "1", "B": "2"}, drop=["B"]) == {"A": "1"}
    assert check_engine_name("docker") == "docker"
    with pytest.raises(InvalidArgument, match="LOOPML_CONTAINER_ENGINE"):
        check_engine_name("podman")


def test_check_failure_is_a_fixed_message_logged_in_full_and_remembered(
    engine: DockerEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    (state / "daemon-down").write_text("")
    for _ in range(3):
        with pytest.raises(FailedPrecondition) as err:
            engine.check()
        assert err.value.message == (
            "LOOPML_CONTAINER_ENGINE=docker, but the Docker engine is not reachable: "
            "`docker info` failed with exit status 1; the server log has its error."
        )
    # docker info's own text (it can name DOCKER_HOST) is in the server log only
    assert "Cannot connect to the Docker daemon at unix:///var/run/docker.sock" in caplog.text
    # one `docker info` for the three calls: the failure is remembered (failure_ttl_s)
    assert [e["event"] for e in fake_docker.events(state)].count("info") == 1
    (state / "daemon-down").unlink()
    with pytest.raises(FailedPrecondition):
        engine.check()  # still the remembered failure
    fresh = DockerEngine(tmp_path / "home", binary=engine.binary(), failure_ttl_s=0.0)
    fresh.check()  # reachable now
    fresh.check()  # and remembered
    assert [e["event"] for e in fake_docker.events(state)].count("info") == 2


def test_check_gives_up_on_an_engine_that_does_not_answer(tmp_path: Path) -> None:
    exe = fake_docker.install(tmp_path / "bin", tmp_path / "state", {})
    (tmp_path / "state" / "daemon-hangs").write_text("")
    engine = DockerEngine(tmp_path / "home", binary=str(exe), info_timeout_s=0.5)
    with pytest.raises(FailedPrecondition, match=r"`docker info` did not finish within 0.5s"):
        engine.check()
    assert DockerEngine(tmp_path / "home")._info_timeout_s == 5.0  # the default


def test_cleanup_hook_runs_off_the_event_loop(engine: DockerEngine, tmp_path: Path) -> None:
    import asyncio
    import threading

    threads: list[str] = []

    def remove_leftovers() -> list[str]:
        threads.append(threading.current_thread().name)
        return []

    engine.remove_leftovers = remove_leftovers  # type: ignore[method-assign]

    async def main() -> str:
        await engine.cleanup_hook()
        return threading.current_thread().name

    loop_thread = asyncio.run(main())
    assert threads and threads[0] != loop_thread


def _sleepers(tmp_path: Path) -> tuple[str, Path]:
    """The fake docker CLI with a "sleeper" image (a container that runs for a minute)."""
    state = tmp_path / "state"
    sleeper = {"cmd": [sys.executable, "-c", "import time; time.sleep(60)"]}
    return str(fake_docker.install(tmp_path / "bin", state, {"sleeper": sleeper})), state


def _run_sleeper(exe: str, state: Path, name: str, label: str | None) -> subprocess.Popen[bytes]:
    """`docker run --name NAME [--label LABEL] sleeper`, once the fake engine lists the container."""
    labels = ["--label", label] if label else []
    proc = subprocess.Popen([exe, "run", "--name", name, "--network", "host", *labels, "sleeper"])
    for _ in range(200):
        if name in fake_docker.containers(state):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the fake engine never listed container {name!r}")


def test_missing_cli_is_named(tmp_path: Path) -> None:
    engine = DockerEngine(tmp_path, binary=str(tmp_path / "no-such-docker"))
    with pytest.raises(FailedPrecondition, match="docker CLI was not found"):
        engine.check()


def test_leftovers_are_removed_by_label_only(engine: DockerEngine, tmp_path: Path) -> None:
    exe, state = _sleepers(tmp_path)
    mine = _run_sleeper(exe, state, "mine", engine.label)
    other = _run_sleeper(exe, state, "other", "loopml.home=x")
    try:
        assert engine.containers() == ["mine"]
        assert engine.remove_leftovers() == ["mine"]
        assert set(fake_docker.containers(state)) == {"other"}
        assert mine.wait(timeout=10) == 137  # the container was killed: its docker run ends
    finally:
        engine.stop("other", 1)
        other.wait(timeout=10)
    assert fake_docker.containers(state) == {}


ECHO = """
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(os.environ["AIP_HTTP_PORT"])), H).serve_forever()
"""


def _replica(engine: DockerEngine, log_dir: Path, image: str, rid: str = "1-r0") -> DockerContainerReplica:
    return DockerContainerReplica(
        rid,
        log_dir / f"{rid}.log",
        20.0,
        engine=engine,
        run=DockerRun(image, "replica"),
        env={"AIP_HEALTH_ROUTE": "/health"},
        predict_route="/predict",
        health_route="/health",
        meta={"deployedModelId": "1"},
    )


def test_two_homes_with_the_same_deployed_model_id_keep_their_containers(tmp_path: Path) -> None:

    (tmp_path / "echo.py").write_text(ECHO)
    state = tmp_path / "state"
    exe = fake_docker.install(
        tmp_path / "bin", state, {"echo:1": {"cmd": [sys.executable, str(tmp_path / "echo.py")]}}
    )
    a = _replica(DockerEngine(tmp_path / "home-a", binary=str(exe)), tmp_path / "a", "echo:1")
    b = _replica(DockerEngine(tmp_path / "home-b", binary=str(exe)), tmp_path / "b", "echo:1")
    try:
        a.start()
        b.start()  # removes a leftover of *its* name first: never home A's container
        assert a.alive() and b.alive() and a.check_health() and b.check_health()
        assert a.container != b.container
        assert set(fake_docker.containers(state)) == {a.container, b.container}
        assert not [e for e in fake_docker.events(state) if e["event"] == "rm" and e["name"] == a.container]
    finally:
        a.stop(1.0)
        b.stop(1.0)
    assert fake_docker.containers(state) == {}


def test_a_replica_whose_port_was_taken_meanwhile_starts_again_on_another(tmp_path: Path) -> None:
    """The declared port was free when chosen, but something bound it before the server did: the
    server exits with EADDRINUSE; the replica is started once more on a new free port."""

    from loopml.serving.containers import ContainerReplica, free_port

    marker = tmp_path / "first-run-done"
    (tmp_path / "server.py").write_text(
        "import os, sys, pathlib\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "if not marker.exists():\n"
        "    marker.write_text(os.environ['AIP_HTTP_PORT'])\n"
        "    print('OSError: [Errno 98] Address already in use', flush=True)\n"
        "    sys.exit(1)\n" + ECHO
    )
    declared = free_port()
    replica = ContainerReplica(
        "7-r0",
        tmp_path / "7-r0.log",
        20.0,
        argv=[sys.executable, str(tmp_path / "server.py"), "--port", str(declared)],
        env={"PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        predict_route="/predict",
        health_route="/health",
        meta={"deployedModelId": "7"},
        preferred_port=declared,
    )
    try:
        replica.start()
        assert replica.state == "ready" and replica.check_health()
        assert marker.read_text() == str(declared) and replica.port != declared
        log = (tmp_path / "7-r0.log").read_text()
        assert f"port {declared} was taken before the server bound it; retrying on port {replica.port}" in log
        assert log.count("starting replica 7-r0") == 2 and f"--port {replica.port}" in log
    finally:
        replica.stop(1.0)


def test_a_replica_that_fails_otherwise_is_not_retried(tmp_path: Path) -> None:

    from loopml.serving.containers import ContainerReplica

    replica = ContainerReplica(
        "8-r0",
        tmp_path / "8-r0.log",
        20.0,
        argv=[sys.executable, "-c", "print('bad config'); raise SystemExit(2)"],
        env={"PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        predict_route="/predict",
        health_route="/health",
        meta={"deployedModelId": "8"},
    )
    with pytest.raises(FailedPrecondition, match="exited with code 2"):
        replica.start()
    assert (tmp_path / "8-r0.log").read_text().count("starting replica 8-r0") == 1


def test_a_container_created_after_the_first_rm_is_removed_too(engine: DockerEngine, tmp_path: Path) -> None:
    """A cancel right after `docker run` started: the daemon may create the container only after
    loopml's first `docker rm -f`. Stopping repeats the rm until `docker ps -a` no longer lists it."""
    exe, state = _sleepers(tmp_path)
    late = _run_sleeper(exe, state, "late", engine.label)
    try:
        (state / "rm-misses").write_text("2")  # the first two `rm -f` come "too early"
        assert engine.listed("late") is True and engine.listed("lat") is False
        engine.stop("late", 0)
        assert "late" not in fake_docker.containers(state)
        assert engine.listed("late") is False
        events = [e["event"] for e in fake_docker.events(state) if e.get("name") == "late"]
        assert events.count("rm-missed") == 2 and "rm" in events
        assert late.wait(timeout=10) != 0
    finally:
        if late.poll() is None:
            late.kill()


def test_remove_until_gone_is_bounded(engine: DockerEngine, tmp_path: Path) -> None:
    exe, state = _sleepers(tmp_path)
    stuck = _run_sleeper(exe, state, "stuck", None)
    try:
        (state / "rm-misses").write_text("100")
        assert engine.remove_until_gone("stuck", attempts=3, pause_s=0.0) is False
        events = [e["event"] for e in fake_docker.events(state) if e.get("name") == "stuck"]
        assert events.count("rm-missed") == 3
        (state / "rm-misses").write_text("0")
        assert engine.remove_until_gone("stuck", attempts=3, pause_s=0.0) is True
    finally:
        stuck.wait(timeout=10)
