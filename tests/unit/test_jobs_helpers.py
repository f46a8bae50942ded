"""Pure helpers of the jobs API: page tokens, list filters, GCE metadata answers, the script sdist."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from loopml.api.jobs import MetadataEmulation
from loopml.cli.jobs import script_sdist
from loopml.errors import InvalidArgument
from loopml.training.store import _filter, decode_token, encode_token


def test_page_tokens_round_trip_and_reject_garbage() -> None:
    assert decode_token(encode_token(40)) == 40
    with pytest.raises(InvalidArgument, match="pageToken"):
        decode_token("not-a-token")


def test_filters() -> None:
    body = {"displayName": "train-1", "state": "JOB_STATE_FAILED", "labels": {"team": "ml"}}
    assert _filter('display_name="train-1"')(body)
    assert _filter('state="JOB_STATE_FAILED" AND labels.team="ml"')(body)
    assert _filter("state=5")(body)
    assert not _filter('labels.team!="ml"')(body)
    assert _filter("state=5")({"state": "PIPELINE_STATE_FAILED"})
    with pytest.raises(InvalidArgument):
        _filter("display name = x; drop")


def test_metadata_answers() -> None:
    meta = MetadataEmulation(app=None, project=lambda: "proj9")  # type: ignore[arg-type]
    assert meta.answer("/computeMetadata/v1/project/project-id", "") == (200, b"proj9", "text/plain")
    status, body, ctype = meta.answer(
        "/computeMetadata/v1/instance/service-accounts/default/", "recursive=true"
    )
    assert status == 200 and ctype == "application/json" and "email" in json.loads(body)
    status, body, _ = meta.answer("/computeMetadata/v1/instance/service-accounts/default/token", "")
    assert json.loads(body)["token_type"] == "Bearer"
    assert meta.answer("/", "")[0] == 200
    assert meta.answer("/computeMetadata/v1/instance/attributes/secret", "")[0] == 404


def test_script_sdist_layout(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    name, data = script_sdist(script, ["pandas>=2"])
    assert name == "loopml_script-0.0.1.tar.gz"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = set(tar.getnames())
        setup = tar.extractfile("loopml_script-0.0.1/setup.py").read().decode()  # type: ignore[union-attr]
    assert {"loopml_script-0.0.1/loopml_script/task.py", "loopml_script-0.0.1/PKG-INFO"} <= names
    assert "'pandas>=2'" in setup


def test_jobs_cli_defaults_to_the_same_project_as_every_other_command() -> None:
    from loopml.cli import _common, jobs

    assert jobs._PROJECT.default == _common.PROJECT.default == "local"
