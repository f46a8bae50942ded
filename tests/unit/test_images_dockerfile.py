"""Pure parts of images: Dockerfile parsing, variables, references, .dockerignore, argv rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopml.envs.spec import build_spec, normalise_requirement
from loopml.errors import InvalidArgument
from loopml.images.catalog import parse_ref
from loopml.images.contextfiles import DockerIgnore
from loopml.images.dockerfile import parse, parse_assignments, shell_segments, substitute
from loopml.images.prebuilt import match_prebuilt, python_version_of_base
from loopml.images.runtime import ImageRuntime


def test_parse_lines_continuations_comments_and_forms() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "FROM python:3.11-slim\n"
        "\n"
        "RUN pip install \\\n"
        "    # a comment inside\n"
        "    pandas \\\n"
        "    numpy\n"
        'CMD ["uvicorn", "main:app"]\n'
        "COPY --chown=app:app . /app\n"
        "ENTRYPOINT python -m trainer.task\n"
    )
    ins = parse(text)
    assert [(i.line, i.keyword) for i in ins] == [
        (2, "FROM"),
        (4, "RUN"),
        (8, "CMD"),
        (9, "COPY"),
        (10, "ENTRYPOINT"),
    ]
    assert ins[1].text.split() == ["pip", "install", "pandas", "numpy"]
    assert ins[2].exec_form == ["uvicorn", "main:app"]
    assert ins[3].flags == {"chown": "app:app"} and ins[3].text == ". /app"
    assert ins[4].exec_form is None


def test_substitution_rules() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert substitute("$A-${A}-${B:-dflt}-${A:+alt}-${EMPTY:-e}-\\$A", env) == "1-1-dflt-alt-e-$A"
    assert substitute("${MISSING}x", env) == "x"


def test_env_assignment_forms() -> None:
    (ins,) = parse('ENV A=1 B="two words" C=$A')
    assert parse_assignments(ins, {"A": "0"}) == [("A", "1"), ("B", "two words"), ("C", "0")]
    (legacy,) = parse("ENV GREETING hello world")
    assert parse_assignments(legacy, {}) == [("GREETING", "hello world")]


def test_shell_segments() -> None:
    assert shell_segments("pip install -r r.txt && rm -rf /root/.cache; echo ok") == [
        ["pip", "install", "-r", "r.txt"],
        ["rm", "-rf", "/root/.cache"],
        ["echo", "ok"],
    ]
    assert shell_segments("curl x | sh") is None
    assert shell_segments("echo hi > f") is None


@pytest.mark.parametrize(
    ("text", "name", "tag", "digest"),
    [
        ("pred", "pred", "latest", None),
        ("pred:v1", "pred", "v1", None),
        ("gcr.io/p/pred:v1", "gcr.io/p/pred", "v1", None),
        ("us-central1-docker.pkg.dev/p/repo/pred:2", "us-central1-docker.pkg.dev/p/repo/pred", "2", None),
        ("localhost:5000/pred", "localhost:5000/pred", "latest", None),
        ("docker.io/library/python:3.11", "python", "3.11", None),
        ("pred@sha256:" + "a" * 64, "pred", None, "a" * 64),
    ],
)
def test_image_references(text: str, name: str, tag: str | None, digest: str | None) -> None:
    ref = parse_ref(text)
    assert (ref.name, ref.tag, ref.digest) == (name, tag, digest)


@pytest.mark.parametrize("bad", ["", "UPPER/case", "pred:bad tag", "pred@sha256:xyz", "a//b"])
def test_bad_references(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_ref(bad)


def test_dockerignore() -> None:
    ig = DockerIgnore(["*.log", "secret/", "**/__pycache__", "data/*", "!data/keep.csv"])
    assert ig.ignored("a.log") and not ig.ignored("sub/a.log")
    assert ig.ignored("secret/key") and ig.ignored("x/__pycache__/m.pyc")
    assert ig.ignored("data/big.csv") and not ig.ignored("data/keep.csv")
    assert not ig.ignored("main.py")


def test_prebuilt_mapping() -> None:
    pre = match_prebuilt("us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-0:latest")
    assert pre is not None and pre.framework == "sklearn" and pre.kind == "training"
    assert any(r.startswith("scikit-learn") for r in pre.requirements)
    assert any(r.startswith("gcsfs") for r in pre.requirements)
    pre = match_prebuilt("europe-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-9:latest")
    assert pre is not None and pre.framework == "tensorflow" and pre.kind == "prediction"
    pre = match_prebuilt("python:3.10")
    assert pre is not None and pre.framework == "python" and pre.python == "3.10"
    assert match_prebuilt("gcr.io/p/my-trainer:v1") is None
    assert python_version_of_base("python:3.9-slim-bullseye") == "3.9"
    assert python_version_of_base("python") is None


def test_requirement_normalisation_and_digest(tmp_path: Path) -> None:
    assert (
        normalise_requirement("Scikit_Learn >= 1.2 ; python_version<'4'")
        == "scikit-learn>=1.2;python_version<'4'"
    )
    a = build_spec("cpython-3.11.7", ["pandas", "Scikit_Learn>=1"])
    b = build_spec("cpython-3.11.7", ["scikit-learn >= 1", "pandas", "pandas"])
    assert a.digest == b.digest
    assert build_spec("cpython-3.10.1", ["pandas"]).digest != build_spec("cpython-3.11.7", ["pandas"]).digest
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "pyproject.toml").write_text("[project]\nname='p'\n")
    first = build_spec("cpython-3.11.7", local_packages=[pkg]).digest
    (pkg / "mod.py").write_text("x = 1\n")
    assert build_spec("cpython-3.11.7", local_packages=[pkg]).digest != first
    req = tmp_path / "requirements.txt"
    req.write_text("# deps\npandas  # inline\n-r more.txt\n")
    (tmp_path / "more.txt").write_text("numpy==2.0\n")
    spec = build_spec("cpython-3.11.7", requirement_files=[req])
    assert sorted(spec.requirements) == ["numpy==2.0", "pandas"]
    with pytest.raises(InvalidArgument):
        build_spec("cpython-3.11.7", ["--unknown-option x"])


def _runtime(tmp_path: Path, **kw: object) -> ImageRuntime:
    root = tmp_path / "root"
    (root / "app").mkdir(parents=True)
    (root / "app" / "main.py").write_text("")
    env_dir = tmp_path / "env"
    (env_dir / "bin").mkdir(parents=True)
    (env_dir / "bin" / "python").write_text("")
    return ImageRuntime(
        uri="x",
        root=root,
        workdir=root / "app",
        python=env_dir / "bin" / "python",
        bin_dir=env_dir / "bin",
        env_dir=env_dir,
        **kw,  # type: ignore[arg-type]
    )


def test_argv_follows_entrypoint_cmd_and_vertex_overrides(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, entrypoint=["python", "-m", "trainer.task"], cmd=["--epochs", "1"])
    py = str(rt.python)
    assert rt.argv() == [py, "-m", "trainer.task", "--epochs", "1"]
    assert rt.argv(args_override=["--epochs", "5"]) == [py, "-m", "trainer.task", "--epochs", "5"]
    assert rt.argv(command_override=["python3", "/app/main.py"]) == [py, str(rt.root / "app" / "main.py")]
    assert rt.argv(["/usr/local/bin/python", "x.py"], ["-v"]) == [py, "x.py", "-v"]
    empty = _runtime(tmp_path / "e")
    with pytest.raises(ValueError):
        empty.argv()


def test_process_env_order(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, env={"AIP_HTTP_PORT": "9999", "PYTHONPATH": "/app:/opt/x", "MODEL": "/app/m"})
    env = rt.process_env({"AIP_HTTP_PORT": "8080"})
    assert env["AIP_HTTP_PORT"] == "8080"  # platform values win over the image ENV
    assert env["PATH"].split(":")[0] == str(rt.bin_dir)
    assert env["VIRTUAL_ENV"] == str(rt.env_dir)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONPATH"] == f"{rt.root / 'app'}:/opt/x"
    assert env["MODEL"] == str(rt.root / "app" / "m")
