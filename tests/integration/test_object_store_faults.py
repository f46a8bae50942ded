"""The object store under faults and races: concurrent uploads of one object, failures part-way
through a publish, reads of a prefix where one object is meant.

The store is fsspec's local backend behind its own protocol (`injected://`), with one hook on
`put_file`: the outer boundary a cloud store stands behind, where a test can hold an upload back
(to interleave two of them) or fail it (the store refusing the Nth file). Everything else is
real: the artifact store, the storage API's ObjectStore, worker threads, files.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from loopml.api.storage_backend import ObjectStore, PreconditionFailed
from loopml.artifacts import ArtifactStore


class InjectedFS(LocalFileSystem):
    """A local directory as an object store, whose `put_file` calls `before_put` first."""

    protocol = ("injected",)
    before_put: ClassVar[Callable[[str], None] | None] = None

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        path = str(path)
        if path.startswith("injected://"):
            path = path[len("injected://") :]
        return super()._strip_protocol(path)

    def put_file(self, lpath: Any, rpath: Any, *args: Any, **kwargs: Any) -> Any:
        hook = type(self).before_put
        if hook is not None:
            hook(str(rpath))
        return super().put_file(lpath, rpath, *args, **kwargs)

    # what reached the store: listings and downloads
    calls: ClassVar[list[str]] = []

    def find(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        type(self).calls.append(f"find {path}")
        return super().find(path, *args, **kwargs)

    def get_file(self, rpath: Any, lpath: Any, *args: Any, **kwargs: Any) -> Any:
        type(self).calls.append(f"get {rpath}")
        return super().get_file(rpath, lpath, *args, **kwargs)

    # lookups, apart from `calls`: every operation makes some
    infos: ClassVar[list[str]] = []

    def info(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        type(self).infos.append(str(path))
        return super().info(path, *args, **kwargs)

    def exists(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        type(self).infos.append(str(path))
        return super().exists(path, *args, **kwargs)


@pytest.fixture()
def injected(tmp_path: Path) -> Iterator[tuple[ArtifactStore, Path]]:
    fsspec.register_implementation("injected", InjectedFS, clobber=True)
    InjectedFS.before_put = None
    InjectedFS.calls = []
    InjectedFS.infos = []
    remote = tmp_path / "store"
    yield ArtifactStore(tmp_path / "home", f"injected://{remote}"), remote
    InjectedFS.before_put = None


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _hold_first_put() -> tuple[threading.Event, threading.Event, Callable[[str], None]]:
    """A put hook: the first upload to reach the store waits until `release` is set (at most
    1 s: with the per-object lock, a second upload of the object waits for the first one)."""
    first, release = threading.Event(), threading.Event()

    def hook(rpath: str) -> None:
        if not first.is_set():
            first.set()
            release.wait(timeout=1.0)

    return first, release, hook


def _upload(store: ObjectStore, name: str, data: bytes, params: dict[str, str]) -> Any:
    temp = store.new_temp()
    temp.write_bytes(data)
    try:
        return store.commit("bkt", name, temp, {}, None, params)
    except PreconditionFailed as exc:
        return exc


def test_concurrent_uploads_of_one_object_keep_bytes_and_hashes_together(
    injected: tuple[ArtifactStore, Path],
) -> None:
    artifacts, remote = injected
    store = ObjectStore(artifacts)
    store.create_bucket("bkt", {})
    first, release, hook = _hold_first_put()
    InjectedFS.before_put = hook
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(_upload, store, "o.bin", b"A" * 10, {})
        assert first.wait(30)  # A is uploading; B comes in now and is let through first
        b = pool.submit(_upload, store, "o.bin", b"B" * 20, {})
        b.result()
        release.set()
        a.result()
    InjectedFS.before_put = None
    stored = (remote / "bkt" / "o.bin").read_bytes()
    meta = store.stat("bkt", "o.bin")
    assert (meta["md5Hash"], meta["size"]) == (_md5(stored), len(stored))
    meta, local = store.local_copy("bkt", "o.bin")
    assert local.read_bytes() == stored and meta["md5Hash"] == _md5(stored)
    # another server sharing the store reads the same facts
    other = ObjectStore(ArtifactStore(remote.parent / "home-2", f"injected://{remote}"))
    assert other.stat("bkt", "o.bin")["md5Hash"] == _md5(stored)


def test_generation_preconditions_of_a_delete_look_the_object_up_once(
    injected: tuple[ArtifactStore, Path],
) -> None:
    artifacts, remote = injected
    store = ObjectStore(artifacts)
    store.create_bucket("bkt", {})
    gen = str(_upload(store, "o.bin", b"data", {})["generation"])
    InjectedFS.infos = []
    with pytest.raises(PreconditionFailed):
        store.delete("bkt", "o.bin", {"ifGenerationMatch": str(int(gen) + 1)})
    assert [p for p in InjectedFS.infos if p.endswith("/bkt/o.bin")] == [str(remote / "bkt" / "o.bin")]
    assert (remote / "bkt" / "o.bin").is_file()
    with pytest.raises(PreconditionFailed):
        store.delete("bkt", "o.bin", {"ifGenerationNotMatch": gen})
    assert (remote / "bkt" / "o.bin").is_file()
    store.delete("bkt", "o.bin", {"ifGenerationMatch": gen})
    assert not (remote / "bkt" / "o.bin").exists()


def test_listing_buckets_looks_none_of_them_up_again(injected: tuple[ArtifactStore, Path]) -> None:
    artifacts, remote = injected
    other = ObjectStore(ArtifactStore(remote.parent / "home-2", f"injected://{remote}"))
    for name in ("b-one", "b-two", "b-three"):
        other.create_bucket(name, {"location": "eu"})
    store = ObjectStore(artifacts)
    InjectedFS.infos = []
    listed = store.list_buckets("b-")
    assert [(b["name"], b["location"]) for b in listed] == [
        ("b-one", "EU"),
        ("b-three", "EU"),
        ("b-two", "EU"),
    ]
    assert not [p for p in InjectedFS.infos if "/.loopml/buckets/" in p]
    assert all((artifacts.buckets_dir / b["name"]).is_dir() for b in listed)  # the local cache


def test_if_generation_match_is_atomic_within_one_server(injected: tuple[ArtifactStore, Path]) -> None:
    artifacts, remote = injected
    store = ObjectStore(artifacts)
    store.create_bucket("bkt", {})
    first, release, hook = _hold_first_put()
    InjectedFS.before_put = hook
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(_upload, store, "once.bin", b"first", {"ifGenerationMatch": "0"})
        assert first.wait(30)
        b = pool.submit(_upload, store, "once.bin", b"second", {"ifGenerationMatch": "0"})
        second = b.result()
        release.set()
        results = [a.result(), second]
    InjectedFS.before_put = None
    refused = [r for r in results if isinstance(r, PreconditionFailed)]
    assert len(refused) == 1, results  # "must not exist yet": only one of them can create it
    assert isinstance(second, PreconditionFailed)  # the first one to check is the one that wrote
    assert (remote / "bkt" / "once.bin").read_bytes() == b"first"
    assert store.stat("bkt", "once.bin")["md5Hash"] == _md5(b"first")


def test_a_uri_naming_a_prefix_downloads_and_lists_nothing(injected: tuple[ArtifactStore, Path]) -> None:
    from loopml.errors import InvalidArgument
    from loopml.training.runtime import check_package_uris

    artifacts, remote = injected
    for i in range(20):
        (remote / "bkt" / "big" / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (remote / "bkt" / "big" / f"d{i % 4}" / f"part-{i}.bin").write_bytes(b"x" * 100)
    (remote / "bkt" / "pkg.tar.gz").write_bytes(b"sdist")
    for uri in ("gs://bkt/", "gs://bkt/big", "gs://bkt/big/", "gs://bkt/big/d1"):
        with pytest.raises(InvalidArgument, match="does not exist"):
            check_package_uris(artifacts, [uri])
    assert not (artifacts.buckets_dir / "bkt" / "big").exists()  # nothing was downloaded
    assert InjectedFS.calls == []  # and nothing was listed
    assert check_package_uris(artifacts, ["gs://bkt/pkg.tar.gz"])[0].read_bytes() == b"sdist"
    assert [c.split(" ")[0] for c in InjectedFS.calls] == ["get"]  # just that object
    # exists() answers a prefix without listing what is below it
    assert artifacts.exists("gs://bkt/big") and artifacts.exists("gs://bkt/big/d3/part-3.bin")
    assert artifacts.exists("gs://bkt/")
    assert not artifacts.exists("gs://bkt/big/d9") and not artifacts.exists("gs://bkt/bi")
    (remote / "bkt" / "empty" / "dir").mkdir(parents=True)
    assert not artifacts.exists("gs://bkt/empty")  # directories left with no object in them
    assert [c.split(" ")[0] for c in InjectedFS.calls] == ["get"]


def _fail_put(after: int) -> Callable[[str], None]:
    """A put hook: the store refuses every upload after the first `after`."""
    done: list[str] = []

    def hook(rpath: str) -> None:
        if len(done) >= after:
            raise PermissionError(13, "Access Denied")  # what s3fs makes of a refused PUT
        done.append(rpath)

    return hook


def _stored_files(remote: Path) -> list[str]:
    return sorted(
        p.relative_to(remote).as_posix()
        for p in remote.rglob("*")
        if p.is_file() and ".loopml" not in p.parts
    )


def test_a_dataset_split_that_fails_to_upload_leaves_nothing(injected: tuple[ArtifactStore, Path]) -> None:
    import numpy as np
    import pyarrow as pa

    from loopml.datasets.split import write_csv_splits
    from loopml.errors import Unavailable

    artifacts, remote = injected
    table = pa.table({"x": list(range(10))})
    parts = {"training": np.arange(0, 6), "validation": np.arange(6, 8), "test": np.arange(8, 10)}
    InjectedFS.before_put = _fail_put(after=1)
    with pytest.raises(Unavailable, match="object store"):
        write_csv_splits(artifacts, "gs://bkt/ds/run1", table, parts)
    assert _stored_files(remote) == []  # the one shard that made it was removed again
    assert not artifacts.resolve("gs://bkt/ds/run1").exists()  # and the local copy is gone
    InjectedFS.before_put = None
    uris = write_csv_splits(artifacts, "gs://bkt/ds/run1", table, parts)  # the same write works now
    assert sorted(uris) == ["test", "training", "validation"]
    assert len(_stored_files(remote)) == 3


def test_an_export_that_fails_part_way_leaves_no_shard(
    injected: tuple[ArtifactStore, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loopml.warehouse import Warehouse, export

    artifacts, remote = injected
    monkeypatch.setattr(export, "SHARD_ROWS", 2)  # 7 rows: 4 shards, without a million rows
    wh = Warehouse(tmp_path / "wh.duckdb", artifacts)
    sql = (
        "EXPORT DATA OPTIONS(uri='gs://exp/run/part-*.csv', format='CSV') AS "
        "SELECT x FROM UNNEST([1, 2, 3, 4, 5, 6, 7]) AS x ORDER BY x"
    )
    try:
        InjectedFS.before_put = _fail_put(after=2)
        with pytest.raises(Exception, match="object store") as err:
            wh.query(sql, project="p")
        assert getattr(err.value, "status", None) == 503, err.value
        assert _stored_files(remote) == []
        assert not list((artifacts.buckets_dir / "exp").rglob("part-*"))  # nor in the local cache
        InjectedFS.before_put = None
        wh.query(sql, project="p")  # the destination is empty again: no overwrite needed
        assert _stored_files(remote) == [f"exp/run/part-{i:012d}.csv" for i in range(4)]
    finally:
        wh.close()


# -- what failures show: the operation and the object, never the backend's text or credentials ----
def test_store_errors_name_the_operation_and_object_not_the_backend_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import socket

    from loopml.errors import Unavailable

    with socket.socket() as sock:  # a port nothing listens on: S3 unreachable
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "key": "AKIDEXAMPLE",
        "secret": "never-shown",
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    store = ArtifactStore(tmp_path / "home", "s3://down/loopml", options)
    caplog.set_level(logging.DEBUG, logger="loopml.artifacts.remote")
    with pytest.raises(Unavailable) as err:
        store.fetch_files("gs://bkt/model/")
    message = err.value.message
    assert message.startswith("The object store s3://down/loopml failed to list gs://bkt/model ("), message
    assert f"127.0.0.1:{port}" not in message and "http" not in message  # no endpoint URL
    assert "down/loopml" not in message.split(" failed ", 1)[1]  # no internal key path
    # the details are in the debug log (for the operator), still without credentials
    assert f"127.0.0.1:{port}" in caplog.text
    assert "never-shown" not in caplog.text and "AKIDEXAMPLE" not in caplog.text


def test_credentials_in_backend_errors_and_urls_are_never_shown(
    injected: tuple[ArtifactStore, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from pydantic import SecretStr

    from loopml.config import Settings
    from loopml.errors import FailedPrecondition, Unavailable

    _artifacts, remote = injected
    store = ArtifactStore(
        tmp_path / "home-2",
        f"injected://{remote}",
        {"client_kwargs": {"aws_secret_access_key": "never-shown"}},
    )
    path = store.resolve("gs://bkt/out/a.txt")
    path.parent.mkdir(parents=True)
    path.write_text("x")

    def refuse(rpath: str) -> None:  # a backend whose message quotes the credential and the key
        raise RuntimeError(f"signature for never-shown does not match at {rpath}")

    InjectedFS.before_put = refuse
    caplog.set_level(logging.DEBUG, logger="loopml.artifacts.remote")
    with pytest.raises(Unavailable) as err:
        store.publish("gs://bkt/out/")
    assert err.value.message == (
        f"The object store injected:{remote} failed to write gs://bkt/out/a.txt (RuntimeError)."
    )
    assert "signature for *** does not match" in caplog.text and "never-shown" not in caplog.text
    # a URL with user info: kept out of the settings' repr, refused (without it) where unused
    settings = Settings(object_store_url=SecretStr("s3://AKIA:s3cr3t@team/loopml"))
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in str(settings.model_dump())
    with pytest.raises(FailedPrecondition, match="carries user info") as bad:
        ArtifactStore(tmp_path / "home-3", "s3://AKIA:s3cr3t@team/loopml")
    assert "s3cr3t" not in bad.value.message and "AKIA" not in bad.value.message


def test_a_file_system_store_writes_objects_whole_by_rename(injected: tuple[ArtifactStore, Path]) -> None:
    """On a shared directory the upload goes to a temp file under the store's records and is
    renamed over the object: another server reads the old object or the new one, never a part."""
    artifacts, remote = injected
    store = ObjectStore(artifacts)
    store.create_bucket("bkt", {})
    _upload(store, "o.bin", b"old" * 10, {})
    seen: list[tuple[str, bytes]] = []

    def hook(rpath: str) -> None:
        # mid-upload: what a reader of the shared directory finds at the object's key
        seen.append((rpath, (remote / "bkt" / "o.bin").read_bytes()))

    InjectedFS.before_put = hook
    _upload(store, "o.bin", b"new" * 1000, {})
    InjectedFS.before_put = None
    assert len(seen) == 1
    rpath, during = seen[0]
    assert "/.loopml/tmp/" in rpath and rpath.endswith(".partial"), rpath  # not the object key
    assert during == b"old" * 10
    assert (remote / "bkt" / "o.bin").read_bytes() == b"new" * 1000
    assert list((remote / ".loopml" / "tmp").iterdir()) == []  # nothing left behind
    other = ObjectStore(ArtifactStore(remote.parent / "home-2", f"injected://{remote}"))
    assert other.list_objects("bkt")[0] == ["o.bin"]
