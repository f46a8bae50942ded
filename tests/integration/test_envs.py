"""EnvManager with real builds (uv, and the pip fallback): cache hits, failures, locking, gc."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from loopml.envs import EnvBuildError, EnvManager
from loopml.envs.gcs import GcsView
from loopml.errors import FailedPrecondition, InvalidArgument


@pytest.fixture(scope="module")
def envs(tmp_path_factory: pytest.TempPathFactory) -> EnvManager:
    return EnvManager(tmp_path_factory.mktemp("envs"))


def test_build_then_cache_hit(envs: EnvManager) -> None:
    lines: list[str] = []
    path = envs.ensure(["six", "Requests>=2"], progress=lines.append)
    assert lines, "the installer's output reaches the progress callback"
    assert (path / "bin" / "python").exists()
    out = subprocess.run(
        [str(path / "bin" / "python"), "-c", "import six, requests, sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(path)
    info = envs.get(path.name)
    assert any(x.startswith("six==") for x in info["freeze"])  # type: ignore[union-attr]
    assert info["installer"] == "uv"
    # same content, different spelling and order: the same env, no rebuild
    built_at = (path / "loopml-env.json").stat().st_mtime_ns
    again = envs.ensure(["requests >= 2", "six"], progress=lines.append)
    assert again == path
    assert (path / "loopml-env.json").stat().st_mtime_ns == built_at
    # the host's packages are not visible inside (isolation)
    out = subprocess.run(
        [str(path / "bin" / "python"), "-c", "import fastapi"], capture_output=True, text=True
    )
    assert out.returncode != 0


def test_failed_build_shows_installer_message_and_leaves_nothing(envs: EnvManager) -> None:
    before = sorted(p.name for p in envs.root.iterdir())
    with pytest.raises(EnvBuildError) as err:
        envs.ensure(["loopml-no-such-package-xyz==9.9.9"])
    assert isinstance(err.value, FailedPrecondition) and err.value.status == 400
    assert "loopml-no-such-package-xyz" in err.value.message
    assert "installing requirements" in err.value.message
    assert sorted(p.name for p in envs.root.iterdir()) == before


def test_bad_requirement_input_is_invalid_argument(envs: EnvManager, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        envs.ensure(["-r", str(tmp_path / "missing.txt")])
    with pytest.raises(InvalidArgument):
        envs.ensure(requirement_files=[tmp_path / "missing.txt"])
    with pytest.raises(InvalidArgument):
        envs.ensure(local_packages=[tmp_path])  # not a Python package


def test_local_package_and_concurrent_builds_share_one_env(envs: EnvManager, tmp_path: Path) -> None:
    pkg = tmp_path / "mypkg"
    (pkg / "mypkg").mkdir(parents=True)
    (pkg / "mypkg" / "__init__.py").write_text("VALUE = 41\n")
    (pkg / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "mypkg"\nversion = "0.1"\n'
    )
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(envs.ensure(local_packages=[pkg]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    out = subprocess.run(
        [str(results[0] / "bin" / "python"), "-c", "import mypkg; print(mypkg.VALUE + 1)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "42"
    assert not [p for p in envs.root.iterdir() if p.name.startswith(".tmp-")]
    # a change to the package's files is a different environment
    (pkg / "mypkg" / "__init__.py").write_text("VALUE = 1\n")
    assert envs.spec(local_packages=[pkg]).digest != results[0].name


def test_gc_keeps_envs_in_use(envs: EnvManager) -> None:
    keep = envs.ensure(["six"])
    drop = envs.ensure([])  # an empty env: python only
    old = time.time() - 10 * 86400
    for path in (keep, drop):
        os.utime(path / ".last-used", (old, old))
    removed = envs.gc(keep_days=5, in_use=[keep.name])
    assert drop.name in removed and keep.name not in removed
    assert keep.exists() and not drop.exists()


@pytest.mark.slow
def test_pip_fallback_builds_too(tmp_path: Path) -> None:
    envs = EnvManager(tmp_path / "envs", use_uv=False)
    path = envs.ensure(["six"])
    meta = json.loads((path / "loopml-env.json").read_text())
    assert meta["installer"] == "pip"
    assert any(x.startswith("six==") for x in meta["freeze"])


def test_gcs_view_paths_and_mount(tmp_path: Path) -> None:
    buckets = tmp_path / "buckets"
    (buckets / "b1").mkdir(parents=True)
    view = GcsView(buckets, tmp_path / "gcs")
    assert view.gcs_path("gs://b1/data/train.csv") == str(buckets.resolve() / "b1" / "data" / "train.csv")
    assert view.gcs_path("s3://x/y") == "s3://x/y"
    with pytest.raises(InvalidArgument):
        view.gcs_path("gs://b1/../../etc/passwd")
    assert view.ensure_mount()
    assert (tmp_path / "gcs").is_symlink()
    assert view.gcs_path("/gcs/b1/x") == str(tmp_path / "gcs" / "b1" / "x")
    assert view.env()["LOOPML_GCS_MOUNT"] == str(tmp_path / "gcs")
    assert view.gcs_uri(tmp_path / "gcs" / "b1" / "m.joblib") == "gs://b1/m.joblib"
    (tmp_path / "taken").mkdir()
    with pytest.raises(FailedPrecondition):
        GcsView(buckets, tmp_path / "taken").ensure_mount()
