"""The Cloud Storage JSON API subset with Google's own unmodified clients (google-cloud-storage, gcsfs)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from tests.conftest import ServerProcess


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[storage.Client]:
    yield storage.Client(
        project="proj1",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": server.url},
    )


@pytest.fixture(scope="module")
def bucket(client: storage.Client) -> storage.Bucket:
    return client.create_bucket("data-bkt")


def test_bucket_create_get_list_and_conflict(client: storage.Client, bucket: storage.Bucket) -> None:
    assert client.get_bucket("data-bkt").name == "data-bkt"
    assert "data-bkt" in [b.name for b in client.list_buckets()]
    with pytest.raises(gexc.Conflict):
        client.create_bucket("data-bkt")
    with pytest.raises(gexc.NotFound):
        client.get_bucket("no-such-bucket")
    assert client.lookup_bucket("no-such-bucket") is None


def test_small_upload_download_and_metadata(bucket: storage.Bucket, server: ServerProcess) -> None:
    blob = bucket.blob("dir/a b+c.txt")
    blob.metadata = {"origin": "test"}
    blob.upload_from_string("hello loopml", content_type="text/plain")
    got = bucket.get_blob("dir/a b+c.txt")
    assert got is not None
    assert got.size == 12
    assert got.content_type == "text/plain"
    assert got.metadata == {"origin": "test"}
    assert got.md5_hash and got.crc32c and got.generation and got.updated is not None
    assert bucket.blob("dir/a b+c.txt").download_as_text() == "hello loopml"
    assert bucket.blob("dir/a b+c.txt").download_as_bytes(start=6, end=8) == b"loo"
    assert bucket.blob("dir/a b+c.txt").exists()
    assert not bucket.blob("dir/missing.txt").exists()
    # the object is a plain file in the artifact store, where jobs see it
    assert (server.home / "buckets" / "data-bkt" / "dir" / "a b+c.txt").read_text() == "hello loopml"


def test_resumable_upload_larger_than_chunk(bucket: storage.Bucket, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    payload = os.urandom(1024 * 1024 + 123)
    src.write_bytes(payload)
    blob = bucket.blob("big/big.bin", chunk_size=256 * 1024)
    blob.upload_from_filename(str(src))
    out = tmp_path / "out.bin"
    bucket.blob("big/big.bin").download_to_filename(str(out))
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert bucket.get_blob("big/big.bin").size == len(payload)  # type: ignore[union-attr]


def test_multipart_upload_via_file_object(bucket: storage.Bucket, tmp_path: Path) -> None:
    src = tmp_path / "model.joblib"
    src.write_bytes(b"\r\n--not-a-boundary--\r\n" * 100)
    bucket.blob("models/m1/model.joblib").upload_from_filename(str(src))
    assert bucket.blob("models/m1/model.joblib").download_as_bytes() == src.read_bytes()


def test_list_with_prefix_delimiter_and_pages(client: storage.Client, bucket: storage.Bucket) -> None:
    for name in ("ls/a.csv", "ls/b.csv", "ls/sub/c.csv", "ls/sub/deeper/d.csv", "ls-other.txt"):
        bucket.blob(name).upload_from_string(name)
    names = [b.name for b in client.list_blobs("data-bkt", prefix="ls/")]
    assert names == ["ls/a.csv", "ls/b.csv", "ls/sub/c.csv", "ls/sub/deeper/d.csv"]
    it = client.list_blobs("data-bkt", prefix="ls/", delimiter="/")
    top = [b.name for b in it]
    assert top == ["ls/a.csv", "ls/b.csv"]
    assert it.prefixes == {"ls/sub/"}
    paged = [b.name for b in client.list_blobs("data-bkt", prefix="ls/", max_results=10, page_size=1)]
    assert paged == names
    assert [b.name for b in client.list_blobs("data-bkt", match_glob="ls/**/*.csv")] == names
    globbed = [b.name for b in client.list_blobs("data-bkt", match_glob="ls/sub/**")]
    assert globbed == ["ls/sub/c.csv", "ls/sub/deeper/d.csv"]
    assert [b.name for b in client.list_blobs("data-bkt", match_glob="ls/{a,b}.csv")] == [
        "ls/a.csv",
        "ls/b.csv",
    ]
    after_b = [b.name for b in client.list_blobs("data-bkt", prefix="ls/", start_offset="ls/b")]
    assert after_b == ["ls/b.csv", "ls/sub/c.csv", "ls/sub/deeper/d.csv"]


def test_delete_copy_and_missing(bucket: storage.Bucket) -> None:
    blob = bucket.blob("tmp/x.txt")
    blob.upload_from_string("x")
    copied = bucket.copy_blob(blob, bucket, "tmp/y.txt")
    assert copied.name == "tmp/y.txt"
    assert bucket.blob("tmp/y.txt").download_as_text() == "x"
    bucket.blob("tmp/x.txt").delete()
    assert not bucket.blob("tmp/x.txt").exists()
    with pytest.raises(gexc.NotFound):
        bucket.blob("tmp/x.txt").delete()
    with pytest.raises(gexc.NotFound):
        bucket.blob("tmp/x.txt").download_as_bytes()


def test_patch_metadata_and_folder_placeholder(client: storage.Client, bucket: storage.Bucket) -> None:
    blob = bucket.blob("meta/x.json")
    blob.upload_from_string("{}", content_type="application/json")
    blob.metadata = {"stage": "train"}
    blob.patch()
    got = bucket.get_blob("meta/x.json")
    assert got is not None and got.metadata == {"stage": "train"} and got.metageneration == 2
    bucket.blob("meta/folder/").upload_from_string("")
    it = client.list_blobs("data-bkt", prefix="meta/", delimiter="/")
    assert [b.name for b in it] == ["meta/x.json"]
    assert it.prefixes == {"meta/folder/"}
    assert bucket.blob("meta/folder/").exists()
    with pytest.raises(gexc.BadRequest):
        bucket.blob("meta/x.json/inner").upload_from_string("conflicts with a file")


def test_bucket_delete_refused_when_not_empty(client: storage.Client) -> None:
    b = client.create_bucket("to-delete")
    b.blob("f").upload_from_string("1")
    with pytest.raises(gexc.Conflict):
        b.delete()
    b.blob("f").delete()
    b.delete()
    assert client.lookup_bucket("to-delete") is None


def test_escapes_and_bad_names_are_400(server: ServerProcess, bucket: storage.Bucket) -> None:
    base = f"{server.url}/storage/v1/b/data-bkt/o"
    for name in ("..%2F..%2Fmetadata.db", "a%2F..%2F..%2Fx", "%2Fetc%2Fpasswd", "a%00b", "bad%FFutf8"):
        r = httpx.get(f"{base}/{name}")
        assert r.status_code == 400, (name, r.text)
        assert r.json()["error"]["errors"][0]["reason"] == "invalid"
    r = httpx.post(
        f"{server.url}/upload/storage/v1/b/data-bkt/o",
        params={"uploadType": "media", "name": "../escape.txt"},
        content=b"x",
    )
    assert r.status_code == 400
    assert not (server.home / "buckets" / "escape.txt").exists()
    r = httpx.get(f"{server.url}/storage/v1/b/data-bkt/o/nope.txt")
    assert r.status_code == 404 and "No such object" in r.json()["error"]["message"]
    r = httpx.get(f"{server.url}/storage/v1/b/BAD..bucket/o")
    assert r.status_code == 400
    bucket.blob("dir/a b+c.txt").upload_from_string("hello loopml")
    r = httpx.get(f"{server.url}/storage/v1/b/data-bkt/o/dir%2Fa%20b%2Bc.txt", params={"alt": "media"})
    assert r.status_code == 200 and r.headers["x-goog-hash"].startswith("crc32c=")
    r = httpx.get(
        f"{server.url}/storage/v1/b/data-bkt/o/dir%2Fa%20b%2Bc.txt",
        params={"alt": "media"},
        headers={"Range": "bytes=50-"},
    )
    assert r.status_code == 416
    r = httpx.get(
        f"{server.url}/download/storage/v1/b/data-bkt/o/dir%2Fa%20b%2Bc.txt", headers={"Range": "bytes=-4"}
    )
    assert r.status_code == 206 and r.content == b"opml" and r.headers["content-range"] == "bytes 8-11/12"


def test_unmodified_code_with_storage_emulator_host(server: ServerProcess, bucket: storage.Bucket) -> None:
    """Workshop-style code (W4) with only STORAGE_EMULATOR_HOST set, in a fresh process."""
    script = textwrap.dedent(
        """
        from google.cloud import storage
        client = storage.Client(project="proj1")
        b = client.get_bucket("data-bkt")
        b.blob("w4/scaler/normalization_stats.json").upload_from_string('{"mean": {}}')
        blob = b.blob("w4/scaler/normalization_stats.json")
        print(blob.download_as_string().decode())
        print([x.name for x in client.list_blobs("data-bkt", prefix="w4/")])
        """
    )
    env = dict(os.environ, STORAGE_EMULATOR_HOST=server.url, NO_GCE_CHECK="true")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '{"mean": {}}' in out.stdout
    assert "w4/scaler/normalization_stats.json" in out.stdout


def test_gcsfs_open_ls_put_and_missing(server: ServerProcess, bucket: storage.Bucket, tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, gcsfs
        fs = gcsfs.GCSFileSystem(token="anon", project="proj1")
        with fs.open("data-bkt/fs/model_20240101_120000.pkl", "wb") as f:
            f.write(b"pickled" * 1000)
        fs.put(sys.argv[1], "data-bkt/fs/local.txt")
        print(sorted(fs.ls("data-bkt/fs")))
        with fs.open("data-bkt/fs/local.txt", "rb") as f:
            print(f.read().decode())
        print(fs.cat("data-bkt/fs/model_20240101_120000.pkl")[:7].decode())
        print(fs.exists("data-bkt/fs/nothing"))
        try:
            fs.open("data-bkt/fs/nothing.txt", "rb").read()
        except FileNotFoundError:
            print("FileNotFoundError")
        fs.rm_file("data-bkt/fs/local.txt")
        print(fs.exists("data-bkt/fs/local.txt"))
        """
    )
    local = tmp_path / "local.txt"
    local.write_text("from gcsfs")
    # gcsfs >= 2025.x probes the bucket type over gRPC (storage control API) unless told not to;
    # loopml sets this variable for its jobs and replicas (GcsView.env()).
    env = dict(
        os.environ,
        STORAGE_EMULATOR_HOST=server.url,
        NO_GCE_CHECK="true",
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(local)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "['data-bkt/fs/local.txt', 'data-bkt/fs/model_20240101_120000.pkl']"
    assert lines[1:] == ["from gcsfs", "pickled", "False", "FileNotFoundError", "False"]
