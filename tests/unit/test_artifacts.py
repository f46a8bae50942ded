from __future__ import annotations

import os
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


@pytest.mark.parametrize("bucket", ["bkt\n", "bkt\n\n", "Bkt", "b", "bkt-"])
def test_bad_bucket_names_are_refused(tmp_path: Path, bucket: str) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(InvalidArgument, match="Invalid bucket name"):
        store.bucket_path(bucket)
    assert not (tmp_path / "buckets" / bucket).exists()


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


def _no_partials(store: ArtifactStore) -> bool:
    return not any(p.name.endswith(".partial") for p in store.registry_dir.rglob("*"))


def test_snapshot_refuses_a_link_out_of_the_bucket_deep_inside(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    secret = tmp_path / "outside" / "secret.pkl"
    secret.parent.mkdir()
    secret.write_bytes(b"not yours")
    model = store.resolve("gs://bkt/model")
    model.mkdir(parents=True)
    (model / "model.joblib").symlink_to(secret)
    with pytest.raises(InvalidArgument, match="links out of its bucket"):
        store.snapshot("gs://bkt/model", "m", "1")
    (model / "model.joblib").unlink()
    (model / "sub").symlink_to(secret.parent, target_is_directory=True)
    with pytest.raises(InvalidArgument, match="links out of its bucket"):
        store.snapshot("gs://bkt/model", "m", "1")
    assert not (store.registry_dir / "m" / "1").exists() and _no_partials(store)


def test_snapshot_follows_links_that_stay_in_the_bucket(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    shared = store.resolve("gs://bkt/shared/weights.bin")
    shared.parent.mkdir(parents=True)
    shared.write_bytes(b"w")
    model = store.resolve("gs://bkt/model")
    model.mkdir()
    (model / "weights.bin").symlink_to(shared)
    dest = store.snapshot("gs://bkt/model", "m", "1")
    assert (dest / "weights.bin").read_bytes() == b"w" and not (dest / "weights.bin").is_symlink()


def test_snapshot_of_a_bad_tree_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    model = store.resolve("gs://bkt/model")
    model.mkdir(parents=True)
    (model / "model.joblib").write_bytes(b"x")
    (model / "gone").symlink_to(model / "missing")
    with pytest.raises(InvalidArgument, match="dangling"):
        store.snapshot("gs://bkt/model", "m", "1")
    (model / "gone").unlink()
    (model / "loop").symlink_to(model, target_is_directory=True)
    with pytest.raises(InvalidArgument, match="seen before"):
        store.snapshot("gs://bkt/model", "m", "1")
    (model / "loop").unlink()
    local = tmp_path / "local-model"
    local.mkdir()
    (local / "model.joblib").write_bytes(b"x")
    unreadable = local / "private.bin"
    unreadable.write_bytes(b"x")
    unreadable.chmod(0)
    try:
        if os.access(unreadable, os.R_OK):  # root reads anything: use a FIFO instead
            unreadable.chmod(0o600)
            unreadable.unlink()
            os.mkfifo(unreadable)
        with pytest.raises(InvalidArgument, match=r"private\.bin"):
            store.snapshot(str(local), "m", "1")
    finally:
        unreadable.chmod(0o600)
    assert not (store.registry_dir / "m" / "1").exists() and _no_partials(store)
    assert store.snapshot("gs://bkt/model", "m", "1").joinpath("model.joblib").read_bytes() == b"x"
