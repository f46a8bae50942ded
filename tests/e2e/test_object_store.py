"""loopml servers over a real object store (`LOOPML_OBJECT_STORE_URL`).

S3 is moto's HTTP server on 127.0.0.1 (the one outer boundary, standing in for AWS), reached by
the servers through s3fs with credentials from `AWS_*` variables and the endpoint from
`LOOPML_OBJECT_STORE_OPTIONS`. Two servers with their own LOOPML_HOME share the store; a third
uses a `file://` store outside its home.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import joblib
import pytest
import s3fs
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from moto.server import ThreadedMotoServer

from tests.conftest import ServerProcess, free_port
from tests.e2e.serving_helpers import PARENT, create_endpoint, deploy, predict, train, upload

STORE = "team/loopml"  # s3://team/loopml: bucket B lives at s3://team/loopml/B/...


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[s3fs.S3FileSystem, str]]:
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing")
    fs.makedirs("team", exist_ok=True)  # moto servers of one process share their state
    yield fs, endpoint
    moto.stop()


def _server(home: Path, env: dict[str, str]) -> ServerProcess:
    srv = ServerProcess(home=home, port=free_port(), env={"LOOPML_PREBUILT_ENVS": "host", **env})
    srv.start()
    return srv


@pytest.fixture(scope="module")
def servers(
    s3: tuple[s3fs.S3FileSystem, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    env = {
        "LOOPML_OBJECT_STORE_URL": f"s3://{STORE}",
        "LOOPML_OBJECT_STORE_OPTIONS": json.dumps({"endpoint_url": s3[1]}),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-never-logged",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    a = _server(tmp_path_factory.mktemp("home-a"), env)
    b = _server(tmp_path_factory.mktemp("home-b"), env)
    yield a, b
    a.stop()
    b.stop()
    for srv in (a, b):
        assert srv.log_path is not None
        assert "s3cr3t-never-logged" not in srv.log_path.read_text(errors="replace")


def _gcs(srv: ServerProcess) -> storage.Client:
    return storage.Client(
        project="p", credentials=AnonymousCredentials(), client_options={"api_endpoint": srv.url}
    )


def test_gcs_api_writes_through_and_another_server_sees_it(
    servers: tuple[ServerProcess, ServerProcess], s3: tuple[s3fs.S3FileSystem, str]
) -> None:
    a, b = servers
    fs = s3[0]
    bucket_a = _gcs(a).create_bucket("shared-bkt")
    blob = bucket_a.blob("dir/report.csv")
    blob.metadata = {"origin": "server-a"}
    blob.upload_from_string("x,y\n1,2\n", content_type="text/csv")
    assert fs.cat(f"{STORE}/shared-bkt/dir/report.csv") == b"x,y\n1,2\n"  # in the store
    assert [x.name for x in bucket_a.list_blobs()] == ["dir/report.csv"]
    assert bucket_a.blob("dir/report.csv").download_as_bytes() == b"x,y\n1,2\n"

    client_b = _gcs(b)
    with pytest.raises(gexc.Conflict):
        client_b.create_bucket("shared-bkt")
    bucket_b = client_b.get_bucket("shared-bkt")
    got = bucket_b.get_blob("dir/report.csv")
    assert got is not None
    assert (got.content_type, got.metadata, got.size) == ("text/csv", {"origin": "server-a"}, 8)
    assert got.generation == bucket_a.get_blob("dir/report.csv").generation  # type: ignore[union-attr]
    assert got.download_as_bytes() == b"x,y\n1,2\n"

    # an object put in the store directly (another tool) is listed, hashed and served by both
    fs.pipe(f"{STORE}/shared-bkt/dir/direct.bin", b"\x00\x01direct")
    direct = bucket_a.get_blob("dir/direct.bin")
    assert direct is not None
    assert direct.md5_hash == base64.b64encode(hashlib.md5(b"\x00\x01direct").digest()).decode()
    assert [x.name for x in bucket_b.list_blobs(prefix="dir/")] == ["dir/direct.bin", "dir/report.csv"]
    # an overwrite on B (same size) is what A serves next, though A has the old bytes cached
    bucket_b.blob("dir/report.csv").upload_from_string("x,y\n3,4\n", content_type="text/csv")
    assert bucket_a.blob("dir/report.csv").download_as_bytes() == b"x,y\n3,4\n"
    # a delete on B is gone from the store and from A
    bucket_b.blob("dir/direct.bin").delete()
    assert not fs.exists(f"{STORE}/shared-bkt/dir/direct.bin")
    assert not bucket_a.blob("dir/direct.bin").exists()
    assert [x.name for x in bucket_a.list_blobs()] == ["dir/report.csv"]
    assert "shared-bkt" in [x.name for x in client_b.list_buckets()]


def test_model_only_in_the_store_uploads_deploys_and_predicts(
    servers: tuple[ServerProcess, ServerProcess], s3: tuple[s3fs.S3FileSystem, str]
) -> None:
    a, _b = servers
    fs = s3[0]
    model, x = train()
    buf = io.BytesIO()
    joblib.dump(model, buf)
    fs.pipe(f"{STORE}/models-bkt/tree/v1/model.joblib", buf.getvalue())
    assert not (a.home / "buckets" / "models-bkt").exists()  # nothing local before the upload
    upload(a.url, "tree-from-s3", "gs://models-bkt/tree/v1/")
    endpoint = create_endpoint(a.url, "ep-s3")
    deploy(a.url, endpoint, "tree-from-s3", split={"0": 100})
    r = predict(a.url, endpoint, {"instances": x[:5].tolist()})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == model.predict(x[:5]).tolist()
    # escapes are 400s naming the problem, with nothing registered
    bad = httpx.post(
        f"{a.url}/v1/{PARENT}/models:upload",
        json={"model": {"displayName": "bad", "artifactUri": "gs://models-bkt/../other/x"}},
        timeout=30,
    )
    assert bad.status_code == 400 and "escapes its bucket" in bad.json()["error"]["message"], bad.text
    missing = httpx.post(
        f"{a.url}/v1/{PARENT}/models:upload",
        json={"model": {"displayName": "m", "artifactUri": "gs://models-bkt/nothing/"}},
        timeout=30,
    )
    assert missing.status_code == 400 and "object store" in missing.json()["error"]["message"]
    escape = httpx.get(f"{a.url}/storage/v1/b/models-bkt/o/tree%2F..%2F..%2Fx")
    assert escape.status_code == 400, escape.text


def test_training_output_lands_in_the_store(
    servers: tuple[ServerProcess, ServerProcess], s3: tuple[s3fs.S3FileSystem, str]
) -> None:
    a, b = servers
    fs = s3[0]
    # the job writes its model as local files (the /gcs/ view), not through the storage API
    code = textwrap.dedent(
        """
        import os
        bucket, _, prefix = os.environ["AIP_MODEL_DIR"][5:].partition("/")
        out = os.path.join(os.environ["LOOPML_GCS_ROOT"], bucket, prefix)
        os.makedirs(os.path.join(out, "assets"), exist_ok=True)
        open(os.path.join(out, "model.txt"), "w").write("trained on a")
        open(os.path.join(out, "assets", "vocab.txt"), "w").write("a b")
        """
    )
    body = {
        "displayName": "to-store",
        "jobSpec": {
            "workerPoolSpecs": [
                {
                    "replicaCount": "1",
                    "containerSpec": {"imageUri": "python:3.11-slim", "command": ["python", "-c", code]},
                }
            ],
            "baseOutputDirectory": {"outputUriPrefix": "gs://train-bkt/run1"},
        },
    }
    r = httpx.post(f"{a.url}/v1/{PARENT}/customJobs", json=body, timeout=30)
    assert r.status_code == 200, r.text
    name = r.json()["name"]
    deadline = time.monotonic() + 60
    while (state := httpx.get(f"{a.url}/v1/{name}").json()["state"]) not in (
        "JOB_STATE_SUCCEEDED",
        "JOB_STATE_FAILED",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert state == "JOB_STATE_SUCCEEDED", httpx.get(f"{a.url}/v1/{name}:logs").text
    # in the store as soon as the job is done, and so on the other server
    assert fs.cat(f"{STORE}/train-bkt/run1/model/model.txt") == b"trained on a"
    assert fs.cat(f"{STORE}/train-bkt/run1/model/assets/vocab.txt") == b"a b"
    bucket_b = _gcs(b).bucket("train-bkt")
    assert sorted(x.name for x in bucket_b.list_blobs(prefix="run1/")) == [
        "run1/model/assets/vocab.txt",
        "run1/model/model.txt",
    ]
    assert bucket_b.blob("run1/model/model.txt").download_as_text() == "trained on a"


def test_file_object_store_outside_the_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    store = tmp_path_factory.mktemp("file-store")
    srv = _server(tmp_path_factory.mktemp("home-c"), {"LOOPML_OBJECT_STORE_URL": store.as_uri()})
    try:
        bucket = _gcs(srv).create_bucket("local-bkt")
        bucket.blob("a/b.txt").upload_from_string("kept in the store")
        assert (store / "local-bkt" / "a" / "b.txt").read_text() == "kept in the store"
        (store / "local-bkt" / "a" / "c.txt").write_text("put there by hand")
        assert [x.name for x in bucket.list_blobs()] == ["a/b.txt", "a/c.txt"]
        assert bucket.blob("a/c.txt").download_as_text() == "put there by hand"
        bucket.blob("a/b.txt").delete()
        assert not (store / "local-bkt" / "a" / "b.txt").exists()
    finally:
        srv.stop()


def test_batch_prediction_reads_and_writes_the_store(
    servers: tuple[ServerProcess, ServerProcess], s3: tuple[s3fs.S3FileSystem, str]
) -> None:
    _a, b = servers
    fs = s3[0]
    model, x = train(flip=True)
    buf = io.BytesIO()
    joblib.dump(model, buf)
    fs.pipe(f"{STORE}/models-bkt/flipped/model.joblib", buf.getvalue())
    upload(b.url, "flipped", "gs://models-bkt/flipped")
    rows = x[:40].tolist()
    fs.pipe(f"{STORE}/inputs-bkt/jsonl/a.jsonl", "".join(json.dumps(r) + "\n" for r in rows[:25]).encode())
    fs.pipe(f"{STORE}/inputs-bkt/jsonl/b.jsonl", "".join(json.dumps(r) + "\n" for r in rows[25:]).encode())
    body = {
        "displayName": "from-store",
        "model": f"{PARENT}/models/flipped",
        "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": ["gs://inputs-bkt/jsonl/*.jsonl"]}},
        "outputConfig": {
            "predictionsFormat": "jsonl",
            "gcsDestination": {"outputUriPrefix": "gs://outputs-bkt/p"},
        },
    }
    r = httpx.post(f"{b.url}/v1/{PARENT}/batchPredictionJobs", json=body, timeout=60)
    assert r.status_code == 200, r.text
    name = r.json()["name"]
    deadline = time.monotonic() + 60
    while (job := httpx.get(f"{b.url}/v1/{name}").json())["state"] not in (
        "JOB_STATE_SUCCEEDED",
        "JOB_STATE_FAILED",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    out = job["outputInfo"]["gcsOutputDirectory"].removeprefix("gs://")
    files = fs.glob(f"{STORE}/{out}/predictions_*.jsonl")
    assert files
    got = [json.loads(line) for f in files for line in fs.cat(f).splitlines()]
    expected = model.predict(x[:40]).tolist()
    assert sorted((tuple(g["instance"]), g["prediction"]) for g in got) == sorted(
        zip(map(tuple, rows), expected, strict=True)
    )


def test_a_bad_object_store_configuration_is_a_clear_start_up_error(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    base = {**os.environ, "LOOPML_HOME": str(tmp_path / "home"), "LOOPML_PORT": str(free_port())}
    cases = [
        ({"LOOPML_OBJECT_STORE_URL": "nosuchproto://b/p"}, "Cannot open the object store nosuchproto://b/p"),
        (
            {"LOOPML_OBJECT_STORE_URL": "s3://b/p", "LOOPML_OBJECT_STORE_OPTIONS": '{"secret": s3cr3t}'},
            "LOOPML_OBJECT_STORE_OPTIONS is not valid JSON",
        ),
        (
            {"LOOPML_OBJECT_STORE_URL": (tmp_path / "home" / "buckets").as_uri()},
            "overlaps the artifact root",
        ),
        (  # credentials in the URL: named as unused, never shown
            {"LOOPML_OBJECT_STORE_URL": "s3://AKIA:s3cr3t@b/p"},
            "The object store URL s3://b/p carries user info",
        ),
    ]
    for env, message in cases:
        done = subprocess.run(
            [sys.executable, "-m", "loopml", "server"],
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert "s3cr3t" not in done.stderr + done.stdout


# -- a file:// store: symbolic links out of a bucket, bucket deletion ---------------------------
@pytest.fixture(scope="module")
def file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    store = tmp_path_factory.mktemp("file-store-2")
    srv = _server(tmp_path_factory.mktemp("home-d"), {"LOOPML_OBJECT_STORE_URL": store.as_uri()})
    yield srv, store
    srv.stop()


def test_links_out_of_a_bucket_are_refused_by_every_object_call(
    file_server: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    srv, store = file_server
    bucket = _gcs(srv).create_bucket("link-bkt")
    bucket.blob("ok.txt").upload_from_string("inside")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text("do not read")
    (store / "link-bkt" / "link").symlink_to(secret)  # a directory link out of the bucket
    (store / "link-bkt" / "file-link").symlink_to(secret / "key.txt")  # a file link out of it
    base = f"{srv.url}/storage/v1/b/link-bkt/o"
    calls = [
        ("GET", f"{base}/link%2Fkey.txt?alt=media"),
        ("GET", f"{base}/link%2Fkey.txt"),
        ("GET", f"{base}/file-link?alt=media"),
        ("GET", f"{srv.url}/download/storage/v1/b/link-bkt/o/file-link?alt=media"),
        ("POST", f"{base}/link%2Fkey.txt/copyTo/b/link-bkt/o/copied.txt"),
        ("POST", f"{base}/file-link/rewriteTo/b/link-bkt/o/copied.txt"),
        ("PATCH", f"{base}/file-link"),
        ("DELETE", f"{base}/link%2Fkey.txt"),
        ("DELETE", f"{base}/file-link"),
        ("POST", f"{srv.url}/upload/storage/v1/b/link-bkt/o?uploadType=media&name=link%2Fnew.txt"),
    ]
    for method, url in calls:
        r = httpx.request(method, url, content=b"{}" if method != "GET" else None, timeout=30)
        assert r.status_code == 400, (method, url, r.status_code, r.text)
        assert "escapes its bucket" in r.json()["error"]["message"], r.text
        assert "do not read" not in r.text
    # nothing outside was read into the cache, written, copied or deleted
    assert sorted(p.name for p in secret.iterdir()) == ["key.txt"]
    assert (secret / "key.txt").read_text() == "do not read"
    assert not (store / "link-bkt" / "copied.txt").exists()
    assert not list((srv.home / "buckets" / "link-bkt").rglob("key.txt"))
    assert bucket.blob("ok.txt").download_as_text() == "inside"  # the bucket itself still works


def test_a_deleted_bucket_stays_deleted_on_a_file_store(file_server: tuple[ServerProcess, Path]) -> None:
    srv, store = file_server
    client = _gcs(srv)
    bucket = client.create_bucket("gone-bkt")
    bucket.blob("a/b/c.txt").upload_from_string("x")
    bucket.blob("a/b/c.txt").delete()
    bucket.delete()
    r = httpx.get(f"{srv.url}/storage/v1/b/gone-bkt", timeout=30)
    assert r.status_code == 404, r.text
    assert "gone-bkt" not in [b.name for b in client.list_buckets()]
    assert not (store / "gone-bkt").exists()
    again = httpx.post(f"{srv.url}/storage/v1/b?project=p", json={"name": "gone-bkt"}, timeout=30)
    assert again.status_code == 200, again.text
    assert list(client.bucket("gone-bkt").list_blobs()) == []
    # a file no object name can have (put there by another tool) keeps the bucket: 409, not lost
    (store / "gone-bkt" / "d").mkdir(parents=True)
    (store / "gone-bkt" / "d" / "line\nbreak").write_text("kept")
    r = httpx.delete(f"{srv.url}/storage/v1/b/gone-bkt", timeout=30)
    assert r.status_code == 409 and "not empty" in r.json()["error"]["message"], r.text
    assert (store / "gone-bkt" / "d" / "line\nbreak").read_text() == "kept"
    assert httpx.get(f"{srv.url}/storage/v1/b/gone-bkt", timeout=30).status_code == 200
