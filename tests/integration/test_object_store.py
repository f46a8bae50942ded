"""The artifact store over a real object store: a `file://` directory outside the artifact root
(fsspec's local backend) and S3 served by moto over HTTP on 127.0.0.1 (s3fs)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import s3fs
from moto.server import ThreadedMotoServer

from loopml.artifacts import ArtifactStore
from loopml.artifacts.remote import display_url, parse_options
from loopml.errors import FailedPrecondition, InvalidArgument


@pytest.fixture()
def stores(tmp_path: Path) -> tuple[ArtifactStore, ArtifactStore, Path]:
    """Two artifact roots (two servers) sharing one file:// object store."""
    remote = tmp_path / "object-store"
    a = ArtifactStore(tmp_path / "home-a", remote.as_uri())
    b = ArtifactStore(tmp_path / "home-b", remote.as_uri())
    return a, b, remote


def test_publish_then_fetch_on_another_root(stores: tuple[ArtifactStore, ArtifactStore, Path]) -> None:
    a, b, remote = stores
    out = a.resolve("gs://bkt/run/model/")
    (out / "sub").mkdir(parents=True)
    (out / "model.bin").write_bytes(b"weights")
    (out / "sub" / "vocab.txt").write_text("a b c")
    (out / ".model.bin.tmp-123").write_bytes(b"half")  # an in-progress write: never published
    assert a.publish("gs://bkt/run/model/") == 2
    assert (remote / "bkt" / "run" / "model" / "model.bin").read_bytes() == b"weights"
    assert not (remote / "bkt" / "run" / "model" / ".model.bin.tmp-123").exists()
    assert a.publish("gs://bkt/run/model/") == 0  # unchanged since uploaded
    assert not b.resolve("gs://bkt/run/model/model.bin").exists()
    assert b.fetch("gs://bkt/run/model") == b.buckets_dir / "bkt" / "run" / "model"
    assert not b.resolve("gs://bkt/run/model").exists()  # fetch reads one object, not a prefix
    assert sorted(b.fetch_files("gs://bkt/run/model")) == ["run/model/model.bin", "run/model/sub/vocab.txt"]
    assert b.resolve("gs://bkt/run/model/sub/vocab.txt").read_text() == "a b c"
    assert b.list("gs://bkt/run/mo") == ["gs://bkt/run/model/model.bin", "gs://bkt/run/model/sub/vocab.txt"]
    assert b.read_bytes("gs://bkt/run/model/model.bin") == b"weights"
    # a changed object is downloaded again; a locally changed file is uploaded again
    (remote / "bkt" / "run" / "model" / "model.bin").write_bytes(b"weights v2, longer")
    assert b.read_bytes("gs://bkt/run/model/model.bin") == b"weights v2, longer"
    a.resolve("gs://bkt/run/model/sub/vocab.txt").write_text("x y")
    assert a.publish("gs://bkt/run/model") == 1
    assert b.read_bytes("gs://bkt/run/model/sub/vocab.txt") == b"x y"
    b.remove("gs://bkt/run/model/sub/vocab.txt")
    assert not a.exists("gs://bkt/run/model/sub/vocab.txt")
    assert a.exists("gs://bkt/run/model/model.bin")


def test_snapshot_takes_exactly_the_stored_objects(stores: tuple[ArtifactStore, ArtifactStore, Path]) -> None:
    a, _b, remote = stores
    (remote / "bkt" / "m").mkdir(parents=True)
    (remote / "bkt" / "m" / "model.joblib").write_bytes(b"model")
    stale = a.resolve("gs://bkt/m/stale.txt")  # only in this server's cache, not in the store
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    snap = a.snapshot("gs://bkt/m/", "p", "l", "model", "1")
    assert sorted(p.name for p in snap.iterdir()) == ["model.joblib"]
    single = a.snapshot("gs://bkt/m/model.joblib", "p", "l", "model", "2")
    assert (single / "model.joblib").read_bytes() == b"model"
    with pytest.raises(InvalidArgument, match="does not exist"):
        a.snapshot("gs://bkt/nothing-here/", "p", "l", "model", "3")
    assert not (a.registry_dir / "p" / "l" / "model" / "3").exists()


def test_escapes_are_refused_locally_and_in_the_store(
    stores: tuple[ArtifactStore, ArtifactStore, Path], tmp_path: Path
) -> None:
    a, _b, remote = stores
    for uri in ("gs://bkt/../other/x", "gs://bkt/a/../../x", "s3://bkt/%2e%2e/x", "gs://bkt/a%00b"):
        with pytest.raises(InvalidArgument, match="escapes its bucket"):
            a.fetch(uri)
        with pytest.raises(InvalidArgument, match="escapes its bucket"):
            a.publish(uri)
        with pytest.raises(InvalidArgument, match="escapes its bucket"):  # without a store too
            ArtifactStore(tmp_path / "plain").resolve(uri)
    with pytest.raises(InvalidArgument, match="Invalid bucket name"):
        a.fetch("gs://../x")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text("do not read")
    (remote / "bkt").mkdir(parents=True)
    os.symlink(secret, remote / "bkt" / "link")  # a link in the store out of the bucket
    with pytest.raises(InvalidArgument, match="escapes its bucket"):
        a.snapshot("gs://bkt/link/", "p", "l", "m", "1")
    assert not a.resolve("gs://bkt/link/key.txt").exists()


def test_configuration_errors_are_clear(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with pytest.raises(FailedPrecondition, match="overlaps the artifact root"):
        ArtifactStore(home, (home / "buckets").as_uri())
    with pytest.raises(FailedPrecondition, match="not valid JSON"):
        parse_options("{key: 1}")
    with pytest.raises(FailedPrecondition, match="JSON object"):
        parse_options("[1]")
    assert display_url("s3://AKIA:s3cr3t@team/loopml?x=1") == "s3://team/loopml"


def test_without_an_object_store_nothing_is_transferred(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "home")
    assert store.remote is None
    path = store.resolve("gs://bkt/a.txt")
    path.parent.mkdir(parents=True)
    path.write_text("x")
    assert store.publish("gs://bkt/a.txt") == 0
    assert store.fetch("gs://bkt/a.txt") == path
    assert store.fetch_files("gs://bkt/") == {}
    assert not (tmp_path / "home" / "object-cache").exists()


# -- S3 (moto's real HTTP server standing in for AWS) ---------------------------------------------
@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, Any]]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(**options)
    fs.makedirs("team-int", exist_ok=True)
    yield {"fs": fs, "options": options}
    server.stop()


def test_s3_publish_fetch_and_snapshot(s3: dict[str, Any], tmp_path: Path) -> None:
    fs: s3fs.S3FileSystem = s3["fs"]
    a = ArtifactStore(tmp_path / "a", "s3://team-int/int", s3["options"])
    b = ArtifactStore(tmp_path / "b", "s3://team-int/int", s3["options"])
    out = a.resolve("gs://bkt/job/model/")
    out.mkdir(parents=True)
    (out / "model.txt").write_text("trained")
    assert a.publish("gs://bkt/job/model/") == 1
    assert fs.cat("team-int/int/bkt/job/model/model.txt") == b"trained"
    fs.pipe("team-int/int/bkt/job/model/extra.json", b"{}")
    snap = b.snapshot("gs://bkt/job/model", "p", "l", "m", "1")
    assert sorted(p.name for p in snap.iterdir()) == ["extra.json", "model.txt"]
    assert b.list("gs://bkt/job/") == ["gs://bkt/job/model/extra.json", "gs://bkt/job/model/model.txt"]
    assert b.list("gs://bkt/job/mod") == b.list("gs://bkt/job/")
    assert b.list("gs://bkt/jobs") == []


def test_export_data_shards_go_to_the_store(
    stores: tuple[ArtifactStore, ArtifactStore, Path], tmp_path: Path
) -> None:
    from loopml.errors import InvalidQuery
    from loopml.warehouse import Warehouse

    a, b, remote = stores
    wh_a = Warehouse(tmp_path / "a.duckdb", a)
    wh_b = Warehouse(tmp_path / "b.duckdb", b)
    try:
        wh_a.query(
            "EXPORT DATA OPTIONS(uri='gs://exp/run/part-*.csv', format='CSV', header=true) AS "
            "SELECT x FROM UNNEST([1, 2, 3]) AS x ORDER BY x",
            project="p",
        )
        assert (remote / "exp" / "run" / "part-000000000000.csv").read_text().split() == ["x", "1", "2", "3"]
        # another server's export into the same prefix sees the stored shard (not in its cache)
        with pytest.raises(InvalidQuery, match="not empty"):
            wh_b.query(
                "EXPORT DATA OPTIONS(uri='gs://exp/run/part-*.csv', format='CSV') AS SELECT 9 AS y",
                project="p",
            )
        (remote / "exp" / "run" / "part-000000000001.csv").write_text("x\n4\n")  # a stale shard
        wh_b.query(
            "EXPORT DATA OPTIONS(uri='gs://exp/run/part-*.csv', format='CSV', overwrite=true) AS SELECT 9 AS y",
            project="p",
        )
        assert sorted(p.name for p in (remote / "exp" / "run").iterdir()) == ["part-000000000000.csv"]
        assert a.read_bytes("gs://exp/run/part-000000000000.csv").split() == [b"9"]  # a had cached its own
    finally:
        wh_a.close()
        wh_b.close()


def test_an_unreachable_store_is_unavailable_naming_it(tmp_path: Path) -> None:
    import socket

    from loopml.errors import Unavailable

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "key": "k",
        "secret": "never-shown",
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    store = ArtifactStore(tmp_path / "home", "s3://down/loopml", options)
    for call in (
        lambda: store.fetch("gs://bkt/model/model.joblib"),
        lambda: store.fetch_files("gs://bkt/model/"),
        lambda: store.snapshot("gs://bkt/model/", "p", "l", "m", "1"),
        lambda: store.exists("gs://bkt/x"),
    ):
        with pytest.raises(Unavailable, match="The object store s3://down/loopml failed") as err:
            call()
        assert "never-shown" not in err.value.message
    local = store.resolve("gs://bkt/out/a.txt")
    local.parent.mkdir(parents=True)
    local.write_text("x")
    with pytest.raises(Unavailable):
        store.publish("gs://bkt/out/")
    assert not (store.registry_dir / "p" / "l" / "m").exists()
