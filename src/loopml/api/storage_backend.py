"""Buckets and objects of the Cloud Storage JSON API, over the artifact store's bucket directories.

Objects are plain files (`gs://B/P` is `<artifact_root>/buckets/B/P`, the same file training jobs
and `ArtifactStore.resolve` see). What a file system does not keep (content type, custom
metadata, generation, hashes) lives in a sidecar `<artifact_root>/gcs-meta/B/<sha1(name)>.json`,
recomputed from the file when it is missing or stale (the file was written directly). Uploads
stream into `<artifact_root>/gcs-meta/.uploads/` and are renamed into place, so a reader never
sees half an object.

With a real object store configured (`LOOPML_OBJECT_STORE_URL`) buckets and objects live there
and the bucket directories are a local cache: `loopml.api.storage_remote` does the store side.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import google_crc32c
from starlette.concurrency import run_in_threadpool

from loopml.artifacts import ArtifactStore
from loopml.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LoopmlError,
    NotFound,
    PreconditionFailed,
)

if TYPE_CHECKING:
    from loopml.api.storage_remote import RemoteObjects


T = TypeVar("T")


class BucketNotEmpty(LoopmlError):
    status = 409
    code = "ABORTED"
    grpc_code = 10
    reason = "conflict"


def rfc3339_ns(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Hasher:
    def __init__(self) -> None:
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.crc = google_crc32c.Checksum()
        self.size = 0

    def update(self, data: bytes) -> None:
        self.md5.update(data)
        self.crc.update(data)
        self.size += len(data)

    def result(self) -> dict[str, str]:
        return {
            "md5Hash": base64.b64encode(self.md5.digest()).decode(),
            "crc32c": base64.b64encode(self.crc.digest()).decode(),
        }

    @classmethod
    def of_file(cls, path: Path) -> Hasher:
        h = cls()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        return h


def validate_object_name(name: str) -> str:
    if not name:
        raise InvalidArgument("An object name is required.")
    if "\x00" in name or "\r" in name or "\n" in name:
        raise InvalidArgument("Object names cannot contain NUL, carriage return or line feed.")
    if len(name.encode()) > 1024:
        raise InvalidArgument("Object names are at most 1024 bytes.")
    parts = name.rstrip("/").split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidArgument(
            f"Invalid object name {name!r}: loopml keeps objects as files, so names cannot start with '/' "
            "or contain empty, '.' or '..' path segments."
        )
    return name


class ObjectStore:
    def __init__(self, artifacts: ArtifactStore) -> None:
        self.artifacts = artifacts
        self.buckets_dir = artifacts.buckets_dir
        self.meta_dir = artifacts.root / "gcs-meta"
        self.uploads_dir = self.meta_dir / ".uploads"
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        self.rx: RemoteObjects | None = None
        if artifacts.remote is not None:
            from loopml.api.storage_remote import RemoteObjects

            self.rx = RemoteObjects(self, artifacts.remote)
        # striped per-object locks: a precondition check and the write it guards are atomic
        # within this server (with an object store, calls run on worker threads)
        self._object_locks = [threading.Lock() for _ in range(64)]

    def object_lock(self, bucket: str, name: str) -> threading.Lock:
        """The lock held while object `name` of `bucket` is written, patched or deleted."""
        digest = hashlib.blake2b(f"{bucket}/{name}".encode(), digest_size=2).digest()
        return self._object_locks[int.from_bytes(digest) % len(self._object_locks)]

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` right here on the event loop (local files), or in a worker thread when
        an object store is configured (its calls wait on the network)."""
        if self.rx is None:
            return fn(*args)
        return await run_in_threadpool(fn, *args)

    # -- buckets ---------------------------------------------------------------------------
    def bucket_dir(self, bucket: str, *, must_exist: bool = True) -> Path:
        path = self.artifacts.bucket_path(bucket)
        if must_exist and self.rx is not None:
            if not self.rx.bucket_exists(bucket):
                raise NotFound(f"The specified bucket does not exist: {bucket}.")
            path.mkdir(parents=True, exist_ok=True)
        elif must_exist and not path.is_dir():
            raise NotFound(f"The specified bucket does not exist: {bucket}.")
        return path

    def _bucket_meta(self, bucket: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.meta_dir / bucket / "_bucket.json").read_text())
            return data
        except (FileNotFoundError, json.JSONDecodeError):
            return self.rx.bucket_meta(bucket) if self.rx is not None else {}

    def bucket_json(self, bucket: str) -> dict[str, Any]:
        path = self.bucket_dir(bucket)
        meta = self._bucket_meta(bucket)
        created = int(meta.get("created_ns") or path.stat().st_mtime_ns)
        return {
            "kind": "storage#bucket",
            "id": bucket,
            "name": bucket,
            "projectNumber": str(meta.get("projectNumber", "0")),
            "metageneration": "1",
            "location": meta.get("location", "US"),
            "storageClass": meta.get("storageClass", "STANDARD"),
            "locationType": "multi-region",
            "timeCreated": rfc3339_ns(created),
            "updated": rfc3339_ns(created),
            "etag": "CAE=",
            "labels": meta.get("labels", {}),
            "iamConfiguration": {"uniformBucketLevelAccess": {"enabled": True}},
        }

    def list_buckets(self, prefix: str = "") -> list[dict[str, Any]]:
        if self.rx is not None:  # bucket_json creates each one's local cache directory
            names = [n for n in self.rx.bucket_names() if n.startswith(prefix)]
        else:
            names = sorted(
                p.name for p in self.buckets_dir.iterdir() if p.is_dir() and p.name.startswith(prefix)
            )
        return [self.bucket_json(n) for n in names if _valid_bucket(self.artifacts, n)]

    def create_bucket(self, bucket: str, body: dict[str, Any]) -> dict[str, Any]:
        path = self.bucket_dir(bucket, must_exist=False)
        meta = {
            "created_ns": time.time_ns(),
            "location": str(body.get("location") or "US").upper(),
            "storageClass": body.get("storageClass") or "STANDARD",
            "labels": body.get("labels") or {},
        }
        if self.rx is not None:
            self.rx.create_bucket(bucket, meta)  # AlreadyExists when the store has it
            path.mkdir(parents=True, exist_ok=True)
        else:
            try:
                path.mkdir(parents=True)
            except FileExistsError:
                raise AlreadyExists(
                    f"Your previous request to create the named bucket succeeded and you already own it: {bucket}."
                ) from None
        (self.meta_dir / bucket).mkdir(parents=True, exist_ok=True)
        (self.meta_dir / bucket / "_bucket.json").write_text(json.dumps(meta))
        return self.bucket_json(bucket)

    def delete_bucket(self, bucket: str) -> None:
        path = self.bucket_dir(bucket)
        from loopml.api.storage_listing import walk

        if any(walk(self, path, "")):
            raise BucketNotEmpty(f"The bucket you tried to delete is not empty: {bucket}.")
        if self.rx is not None:
            self.rx.delete_bucket(bucket)
        shutil.rmtree(path, ignore_errors=self.rx is not None)
        shutil.rmtree(self.meta_dir / bucket, ignore_errors=True)

    # -- objects ---------------------------------------------------------------------------
    def object_path(self, bucket: str, name: str) -> Path:
        validate_object_name(name)
        return self.artifacts._inside(self.bucket_dir(bucket), name, f"gs://{bucket}/{name}")

    def _sidecar(self, bucket: str, name: str) -> Path:
        return self.meta_dir / bucket / "o" / f"{hashlib.sha1(name.encode()).hexdigest()}.json"

    def _read_sidecar(self, bucket: str, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self._sidecar(bucket, name).read_text())
            return data
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _write_sidecar(self, bucket: str, name: str, meta: dict[str, Any]) -> None:
        path = self._sidecar(bucket, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, path)

    def stat(self, bucket: str, name: str) -> dict[str, Any]:
        """The stored facts about an object (hashes recomputed when the file changed behind us)."""
        if self.rx is not None:
            return self.rx.stat(bucket, name)[0]
        path = self.object_path(bucket, name)
        placeholder = name.endswith("/")
        if placeholder:
            meta = self._read_sidecar(bucket, name)
            if not path.is_dir() or meta is None:
                raise NotFound(f"No such object: {bucket}/{name}")
            return meta
        if not path.is_file():
            raise NotFound(f"No such object: {bucket}/{name}")
        st = path.stat()
        meta = self._read_sidecar(bucket, name)
        if meta is None or meta.get("size") != st.st_size or meta.get("mtime_ns") != st.st_mtime_ns:
            old = meta or {}
            h = Hasher.of_file(path)
            meta = {
                "name": name,
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "generation": st.st_mtime_ns // 1000,
                "metageneration": 1,
                "created_ns": st.st_mtime_ns,
                "contentType": old.get("contentType") or _guess_type(name),
                "metadata": old.get("metadata") or {},
                **h.result(),
            }
            self._write_sidecar(bucket, name, meta)
        return meta

    def object_json(
        self, bucket: str, name: str, base_url: str, meta: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        meta = meta or self.stat(bucket, name)
        gen = str(meta["generation"])
        quoted = _quote(name)
        updated = rfc3339_ns(int(meta.get("updated_ns") or meta["created_ns"]))
        out: dict[str, Any] = {
            "kind": "storage#object",
            "id": f"{bucket}/{name}/{gen}",
            "selfLink": f"{base_url}/storage/v1/b/{bucket}/o/{quoted}",
            "mediaLink": f"{base_url}/download/storage/v1/b/{bucket}/o/{quoted}?generation={gen}&alt=media",
            "name": name,
            "bucket": bucket,
            "generation": gen,
            "metageneration": str(meta.get("metageneration", 1)),
            "contentType": meta.get("contentType") or "application/octet-stream",
            "storageClass": "STANDARD",
            "size": str(meta["size"]),
            "md5Hash": meta["md5Hash"],
            "crc32c": meta["crc32c"],
            "etag": base64.b64encode(f"{gen}:{meta.get('metageneration', 1)}".encode()).decode(),
            "timeCreated": rfc3339_ns(int(meta["created_ns"])),
            "updated": updated,
            "timeStorageClassUpdated": rfc3339_ns(int(meta["created_ns"])),
            "timeFinalized": rfc3339_ns(int(meta["created_ns"])),
        }
        for key in ("contentEncoding", "contentDisposition", "cacheControl", "contentLanguage"):
            if meta.get(key):
                out[key] = meta[key]
        if meta.get("metadata"):
            out["metadata"] = meta["metadata"]
        return out

    def check_preconditions(
        self, bucket: str, name: str, params: dict[str, str], meta: dict[str, Any] | None = None
    ) -> None:
        """Apply ifGeneration(Not)Match; `meta`: the object's facts when the caller already has
        them (saves a second stat, a HEAD with an object store)."""
        want = params.get("ifGenerationMatch")
        not_want = params.get("ifGenerationNotMatch")
        if want is None and not_want is None:
            return
        if meta is not None:
            current = str(meta["generation"])
        else:
            try:
                current = str(self.stat(bucket, name)["generation"])
            except NotFound:
                current = "0"
        if want is not None and want != current:
            raise PreconditionFailed(
                f"At least one of the pre-conditions you specified did not hold ({bucket}/{name})."
            )
        if not_want is not None and not_want == current:
            raise PreconditionFailed(
                f"At least one of the pre-conditions you specified did not hold ({bucket}/{name})."
            )

    def new_temp(self) -> Path:
        return self.uploads_dir / f"up-{secrets.token_hex(8)}.data"

    def commit(
        self,
        bucket: str,
        name: str,
        temp: Path,
        resource: dict[str, Any],
        hasher: Hasher | None,
        params: dict[str, str],
    ) -> dict[str, Any]:
        """Move an uploaded file into place and record its metadata; returns the stored facts."""
        with self.object_lock(bucket, name):
            return self._commit(bucket, name, temp, resource, hasher, params)

    def _commit(
        self,
        bucket: str,
        name: str,
        temp: Path,
        resource: dict[str, Any],
        hasher: Hasher | None,
        params: dict[str, str],
    ) -> dict[str, Any]:
        try:
            self.check_preconditions(bucket, name, params)
            path = self.object_path(bucket, name)
            hasher = hasher or Hasher.of_file(temp)
            expected_md5 = resource.get("md5Hash")
            if expected_md5 and expected_md5 != hasher.result()["md5Hash"]:
                raise InvalidArgument(
                    f"Provided MD5 hash {expected_md5!r} doesn't match the calculated hash."
                )
            expected_crc = resource.get("crc32c")
            if expected_crc and expected_crc != hasher.result()["crc32c"]:
                raise InvalidArgument(
                    f"Provided CRC32C {expected_crc!r} doesn't match the calculated checksum."
                )
            if name.endswith("/") and hasher.size:
                raise InvalidArgument(f"Object {name!r} ends with '/': only empty folder placeholders.")
            if self.rx is not None:
                return self.rx.commit(bucket, name, temp, self._new_meta(name, hasher, resource, temp))
            if name.endswith("/"):
                path.mkdir(parents=True, exist_ok=True)
            else:
                self._check_no_conflict(bucket, name, path)
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        meta = self._new_meta(name, hasher, resource, path)
        meta["mtime_ns"] = path.stat().st_mtime_ns
        self._write_sidecar(bucket, name, meta)
        return meta

    @staticmethod
    def _new_meta(name: str, hasher: Hasher, resource: dict[str, Any], path: Path) -> dict[str, Any]:
        now_ns = time.time_ns()
        meta: dict[str, Any] = {
            "name": name,
            "size": 0 if name.endswith("/") else path.stat().st_size,
            "generation": now_ns // 1000,
            "metageneration": 1,
            "created_ns": now_ns,
            "contentType": resource.get("contentType") or _guess_type(name),
            "metadata": {str(k): str(v) for k, v in (resource.get("metadata") or {}).items()},
            **hasher.result(),
        }
        for key in ("contentEncoding", "contentDisposition", "cacheControl", "contentLanguage"):
            if resource.get(key):
                meta[key] = str(resource[key])
        return meta

    def _check_no_conflict(self, bucket: str, name: str, path: Path) -> None:
        if path.is_dir():
            raise FailedPrecondition(
                f"Object {name!r} conflicts with objects under {name}/ (loopml keeps objects as files)."
            )
        root = self.bucket_dir(bucket)
        parent = path.parent
        while parent != root:
            if parent.is_file():
                raise FailedPrecondition(
                    f"Object {name!r} conflicts with the object "
                    f"{parent.relative_to(root).as_posix()!r} (loopml keeps objects as files)."
                )
            parent = parent.parent

    def delete(self, bucket: str, name: str, params: dict[str, str]) -> None:
        with self.object_lock(bucket, name):
            self._delete(bucket, name, params)

    def _delete(self, bucket: str, name: str, params: dict[str, str]) -> None:
        self.check_preconditions(bucket, name, params, self.stat(bucket, name))
        path = self.object_path(bucket, name)
        if self.rx is not None:
            self.rx.delete(bucket, name)
        if name.endswith("/"):
            try:
                path.rmdir()
            except OSError:
                pass
        else:
            path.unlink(missing_ok=True)
        self._sidecar(bucket, name).unlink(missing_ok=True)
        root = self.bucket_dir(bucket)
        parent = path.parent
        while (
            parent != root
            and not any(parent.iterdir())
            and self._read_sidecar(bucket, _rel(root, parent) + "/") is None
        ):
            parent.rmdir()
            parent = parent.parent

    def patch(self, bucket: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.object_lock(bucket, name):
            return self._patch(bucket, name, body)

    def _patch(self, bucket: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        meta = self.stat(bucket, name)
        for key in (
            "contentType",
            "contentEncoding",
            "contentDisposition",
            "cacheControl",
            "contentLanguage",
        ):
            if key in body:
                meta[key] = body[key]
        if "metadata" in body:
            if body["metadata"] is None:
                meta["metadata"] = {}
            else:
                merged = dict(meta.get("metadata") or {})
                for k, v in dict(body["metadata"]).items():
                    if v is None:
                        merged.pop(k, None)
                    else:
                        merged[str(k)] = str(v)
                meta["metadata"] = merged
        meta["metageneration"] = int(meta.get("metageneration", 1)) + 1
        meta["updated_ns"] = time.time_ns()
        if self.rx is not None:
            self.rx.save_meta(bucket, name, meta)
        self._write_sidecar(bucket, name, meta)
        return meta

    def copy(
        self, src_bucket: str, src: str, dst_bucket: str, dst: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        meta, source = self.local_copy(src_bucket, src)
        temp = self.new_temp()
        shutil.copyfile(source, temp)
        resource = {k: meta.get(k) for k in ("contentType", "metadata", "contentEncoding", "cacheControl")}
        resource.update({k: v for k, v in body.items() if k in ("contentType", "metadata", "cacheControl")})
        return self.commit(dst_bucket, dst, temp, resource, None, {})

    # -- listing (loopml.api.storage_listing) ------------------------------------------------
    def list_objects(self, bucket: str, **options: Any) -> tuple[list[str], list[str], str | None]:
        """(object names, prefixes, next page token) in GCS order; options as in `list_objects`."""
        from loopml.api.storage_listing import list_objects

        return list_objects(self, bucket, **options)

    def local_copy(self, bucket: str, name: str) -> tuple[dict[str, Any], Path]:
        """(stored facts, local file) of an object, fetched from the object store when there is one."""
        if self.rx is not None:
            return self.rx.local_copy(bucket, name)
        return self.stat(bucket, name), self.object_path(bucket, name)

    def _has_placeholder(self, bucket: str, name: str) -> bool:
        return self._sidecar(bucket, name).is_file()


def _rel(root: Path, path: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return "" if rel == "." else rel


def _valid_bucket(artifacts: ArtifactStore, name: str) -> bool:
    try:
        artifacts.bucket_path(name)
    except InvalidArgument:
        return False
    return True


def _guess_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")
