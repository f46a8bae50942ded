from __future__ import annotations

from pathlib import Path

import pytest

from loopml.artifacts import ArtifactStore
from loopml.errors import InvalidArgument


def test_bucket_uris_map_under_buckets(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    assert (
        store.resolve("gs://my-bucket/a/b.txt")
        == tmp_path.resolve() / "buckets" / "my-bucket" / "a" / "b.txt"
    )
    assert store.resolve("s3://my-bucket/x") == tmp_path.resolve() / "buckets" / "my-bucket" / "x"


@pytest.mark.parametrize(
    "uri",
    ["gs://b1b/../other/x", "gs://b1b/a/../../x", "gs://../etc/passwd", "gs://b1b/%2e%2e/x", "ftp://x/y"],
)
def test_escapes_are_refused(tmp_path: Path, uri: str) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(InvalidArgument):
        store.resolve(uri)


def test_symlink_out_of_bucket_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    bucket = store.bucket_path("bkt")
    bucket.mkdir(parents=True)
    (bucket / "link").symlink_to(tmp_path)
    with pytest.raises(InvalidArgument):
        store.resolve("gs://bkt/link/secret")


def test_snapshot_is_a_copy(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    src = store.write_bytes("gs://bkt/model/model.joblib", b"abc")
    snap = store.snapshot("gs://bkt/model", "p", "l", "m", "1")
    src.write_bytes(b"changed")
    assert (snap / "model.joblib").read_bytes() == b"abc"
    assert store.is_inside(snap)
    assert store.list("gs://bkt/model") == ["gs://bkt/model/model.joblib"]
