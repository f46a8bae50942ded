"""The whole Cloud Storage JSON API suite again, on a server whose buckets live in S3.

Every test of `test_storage_gcs` runs unchanged against a server with
`LOOPML_OBJECT_STORE_URL=s3://…` (moto's HTTP server on 127.0.0.1 standing in for AWS): the API
must answer the same when objects are in a real object store. At the end, the objects the suite
left are in the store itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import s3fs
from moto.server import ThreadedMotoServer

from tests.conftest import ServerProcess, free_port
from tests.e2e.test_storage_gcs import *  # noqa: F403  (the suite, collected again here)
from tests.e2e.test_storage_gcs import bucket, client  # noqa: F401  (its fixtures)


@pytest.fixture(scope="module")
def s3_store() -> Iterator[s3fs.S3FileSystem]:
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    fs = s3fs.S3FileSystem(
        endpoint_url=f"http://{host}:{port}", key="k", secret="s", use_listings_cache=False
    )
    fs.makedirs("suite", exist_ok=True)
    yield fs
    moto.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, s3_store: s3fs.S3FileSystem) -> Iterator[ServerProcess]:
    """Overrides the suite's server: the same API, its buckets in S3."""
    srv = ServerProcess(
        home=tmp_path_factory.mktemp("loopml-home"),
        port=free_port(),
        env={
            "LOOPML_OBJECT_STORE_URL": "s3://suite/objects",
            "LOOPML_OBJECT_STORE_OPTIONS": json.dumps({"endpoint_url": s3_store.endpoint_url}),
            "AWS_ACCESS_KEY_ID": "k",
            "AWS_SECRET_ACCESS_KEY": "s",
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    )
    srv.start()
    yield srv
    srv.stop()


def test_zz_the_suite_left_its_objects_in_the_store(s3_store: s3fs.S3FileSystem) -> None:
    stored = {k.removeprefix("suite/objects/") for k in s3_store.find("suite/objects/data-bkt")}
    assert "data-bkt/models/m1/model.joblib" in stored
    assert "data-bkt/big/big.bin" in stored
