"""The Cloud Storage JSON API over a real object store (`LOOPML_OBJECT_STORE_URL`).

`ObjectStore` hands its bucket and object operations here when the artifact store has a remote.
The store is the source of truth and every write goes through to it: an upload lands in the
store before it is answered (then in the local cache), a delete removes the stored object, a
listing lists the store. What the store does not keep for us (content type, custom metadata,
generation, hashes) is kept next to the objects under `<object_store_url>/.loopml/`, so every
server sharing the store answers the same: `gcs-meta/B/<sha1(name)>.json` per object (with the
token of the object version it describes, recomputed when the object changed behind us),
`folders/B/<quoted name>` per folder placeholder, `buckets/B.json` per bucket created through
the API (a bucket also exists when objects were put under `<url>/B/` directly).
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from loopml.api.storage_backend import BucketNotEmpty, Hasher, _guess_type, validate_object_name
from loopml.artifacts.remote import RemoteStore, error_reason, info_mtime_ns, info_token
from loopml.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable

if TYPE_CHECKING:
    from loopml.api.storage_backend import ObjectStore

_BUCKET_TTL_S = 5.0
_LISTED_TTL_S = 2.0  # how long a listing's object info may stand in for a HEAD of the object


class RemoteObjects:
    def __init__(self, store: ObjectStore, remote: RemoteStore) -> None:
        self.store = store
        self.remote = remote
        self._buckets_seen: dict[str, float] = {}
        # object infos of the latest listing, so its page of object resources needs no HEAD each
        self._listed: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    # -- keys ------------------------------------------------------------------------------
    def _meta_key(self, bucket: str, name: str) -> str:
        return self.remote.meta_key("gcs-meta", bucket, f"{hashlib.sha1(name.encode()).hexdigest()}.json")

    def _folder_key(self, bucket: str, name: str) -> str:
        return self.remote.meta_key("folders", bucket, quote(name, safe=""))

    def _marker_key(self, bucket: str) -> str:
        return self.remote.meta_key("buckets", f"{bucket}.json")

    # -- buckets ---------------------------------------------------------------------------
    def bucket_exists(self, bucket: str) -> bool:
        seen = self._buckets_seen.get(bucket)
        if seen is not None and time.monotonic() - seen < _BUCKET_TTL_S:
            return True
        if self.remote.bucket_exists(bucket):
            self._buckets_seen[bucket] = time.monotonic()
            return True
        return False

    def bucket_names(self) -> list[str]:
        """The store's buckets, each remembered as existing (the listing just showed it), so
        the bucket resources of a listing need no lookup each."""
        names = self.remote.bucket_names()
        now = time.monotonic()
        self._buckets_seen.update(dict.fromkeys(names, now))
        return names

    def bucket_meta(self, bucket: str) -> dict[str, Any]:
        return self.remote.read_json(self._marker_key(bucket)) or {}

    def create_bucket(self, bucket: str, meta: dict[str, Any]) -> None:
        if self.remote.bucket_exists(bucket):
            raise AlreadyExists(
                f"Your previous request to create the named bucket succeeded and you already own it: {bucket}."
            )
        self.remote.write_json(self._marker_key(bucket), meta)
        self._buckets_seen[bucket] = time.monotonic()

    def delete_bucket(self, bucket: str) -> None:
        """Remove the bucket's marker and, on a file-system store, its (empty) directory tree:
        a bucket also exists while `<url>/B/` does, and object deletes leave the directories."""
        if self.remote.is_local:
            self._remove_empty_tree(bucket)
        self.remote.remove_key(self._marker_key(bucket))
        self._buckets_seen.pop(bucket, None)

    def _remove_empty_tree(self, bucket: str) -> None:
        root = self.remote.key(bucket)
        if not os.path.isdir(root) or os.path.islink(root):
            return
        try:
            for dirpath, _dirs, _files in os.walk(root, topdown=False):
                os.rmdir(dirpath)  # fails on a directory still holding something
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                # files the API does not list (names no object can have, put by other tools)
                raise BucketNotEmpty(
                    f"The bucket you tried to delete is not empty: {bucket} (the store holds files "
                    "under it that are not objects)."
                ) from None
            raise Unavailable(
                f"The object store {self.remote.display} failed to delete gs://{bucket} ({error_reason(exc)})."
            ) from None

    # -- listing ---------------------------------------------------------------------------
    def names(self, bucket: str, start: str) -> list[str]:
        """Object names (and folder placeholders) below the directory `start` of a bucket."""
        found = self.remote.objects(bucket, start + "/" if start else "", f"gs://{bucket}/{start}")
        names = []
        for name in found:
            try:  # keys no object name can have (put by other tools): not listed
                validate_object_name(name)
            except InvalidArgument:
                continue
            names.append(name)
        at = time.monotonic()
        with self._lock:
            self._listed = {self.remote.key(bucket, n): (at, info) for n, info in found.items()}
        try:
            folders = self.remote.fs.ls(self.remote.meta_key("folders", bucket), detail=False)
        except FileNotFoundError:
            folders = []
        for entry in folders:
            name = unquote(posixpath.basename(str(entry)))
            if not start or name.startswith(start + "/"):
                names.append(name)
        return names

    # -- objects ---------------------------------------------------------------------------
    def stat(
        self, bucket: str, name: str, *, fresh: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(stored facts, fsspec info) of an object; the facts are recomputed when the object
        changed behind loopml (written to the store directly). `fresh`: never from a listing."""
        store = self.store
        path = store.object_path(bucket, name)
        if name.endswith("/"):
            folder = self.remote.read_json(self._folder_key(bucket, name))
            if folder is None:
                raise NotFound(f"No such object: {bucket}/{name}")
            path.mkdir(parents=True, exist_ok=True)
            return folder, None
        key = self.remote.object_key(bucket, name)  # a link out of the bucket is a 400
        info = None
        with self._lock:
            listed = self._listed.pop(key, None)
        if listed is not None and not fresh and time.monotonic() - listed[0] < _LISTED_TTL_S:
            info = listed[1]
        if info is None:
            info = self.remote.info(key)
        if info is None or info.get("type") == "directory":
            raise NotFound(f"No such object: {bucket}/{name}")
        token = info_token(info)
        meta = store._read_sidecar(bucket, name)
        if meta is not None and meta.get("token") == token:
            return meta, info
        meta = self.remote.read_json(self._meta_key(bucket, name))
        if meta is None or meta.get("token") != token:
            old = meta or {}
            self.remote.download(bucket, name, path, info)
            ns = info_mtime_ns(info) or time.time_ns()
            meta = {
                "name": name,
                "size": int(info.get("size") or 0),
                "token": token,
                "generation": ns // 1000,
                "metageneration": 1,
                "created_ns": ns,
                "contentType": old.get("contentType") or _guess_type(name),
                "metadata": old.get("metadata") or {},
                **Hasher.of_file(path).result(),
            }
            self.remote.write_json(self._meta_key(bucket, name), meta)
        store._write_sidecar(bucket, name, meta)
        return meta, info

    def local_copy(self, bucket: str, name: str) -> tuple[dict[str, Any], Path]:
        """The stored facts and a fresh local copy of an object (downloaded when changed)."""
        meta, info = self.stat(bucket, name, fresh=True)
        path = self.store.object_path(bucket, name)
        if info is not None:
            self.remote.download(bucket, name, path, info)
        return meta, path

    def check_no_conflict(self, bucket: str, name: str) -> None:
        uri = f"gs://{bucket}/{name}"
        if any(n.startswith(name + "/") for n in self.remote.objects(bucket, name + "/", uri)):
            raise FailedPrecondition(
                f"Object {name!r} conflicts with objects under {name}/ (loopml keeps objects as files)."
            )
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            info = self.remote.info(self.remote.object_key(bucket, parent, uri))
            if info is not None and info.get("type") == "file":
                raise FailedPrecondition(
                    f"Object {name!r} conflicts with the object {parent!r} (loopml keeps objects as files)."
                )

    def commit(self, bucket: str, name: str, temp: Path, meta: dict[str, Any]) -> dict[str, Any]:
        """Store an uploaded file (the store first, then the local cache) and its facts.

        The bytes sent to the store are read from this upload's own `temp` file, never from the
        shared cache path (another upload of the same name may rename its file there); the
        caller holds the object's lock (`ObjectStore.object_lock`)."""
        store = self.store
        path = store.object_path(bucket, name)
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            meta = {**meta, "size": 0}
            self.remote.write_json(self._folder_key(bucket, name), meta)
            store._write_sidecar(bucket, name, meta)
            return meta
        self.check_no_conflict(bucket, name)
        info = self.remote.put(bucket, name, temp)  # a failure leaves the cache as it was
        token = info_token(info)
        if path.is_dir():  # a stale directory of the cache: the store has nothing under it
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        st = temp.stat()
        os.replace(temp, path)
        self.remote.remember(bucket, name, path, token, st)
        meta = {**meta, "size": int(info.get("size") or meta["size"]), "token": token}
        self.remote.write_json(self._meta_key(bucket, name), meta)
        store._write_sidecar(bucket, name, meta)
        return meta

    def save_meta(self, bucket: str, name: str, meta: dict[str, Any]) -> None:
        if name.endswith("/"):
            self.remote.write_json(self._folder_key(bucket, name), meta)
        else:
            self.remote.write_json(self._meta_key(bucket, name), meta)

    def delete(self, bucket: str, name: str) -> None:
        if name.endswith("/"):
            self.remote.remove_key(self._folder_key(bucket, name))
            return
        self.remote.remove(bucket, name)
        self.remote.remove_key(self._meta_key(bucket, name))
