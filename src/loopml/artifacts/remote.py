"""A real object store behind the buckets, through fsspec (`LOOPML_OBJECT_STORE_URL`).

Bucket `B` lives at `<object_store_url>/B/...`; the store is the source of truth, shared by every
loopml server pointed at it. The local `<artifact_root>/buckets/B/...` tree is a cache of it:
`ArtifactStore.fetch*` download (only what changed), `ArtifactStore.publish` uploads what loopml
wrote locally. Each cached file has a small token file under `<artifact_root>/object-cache/` (the
remote version it came from, and the local size/mtime it had), so an unchanged object is never
downloaded twice and a locally changed file is never mistaken for a fresh copy.

Options for the fsspec backend come from `LOOPML_OBJECT_STORE_OPTIONS` (a JSON object, e.g.
`{"client_kwargs": {"endpoint_url": "http://minio:9000"}}`) and from whatever the backend reads
itself (`AWS_*` for s3fs). Neither the options nor credentials are ever logged: `display_url`
drops user info from the URL.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import posixpath
import re
import secrets
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

from loopml.errors import FailedPrecondition, InvalidArgument, LoopmlError, Unavailable

log = logging.getLogger(__name__)

META_DIR = ".loopml"
"""Remote prefix for loopml's own records (bucket markers, object metadata, folders). A leading
dot is never a valid bucket name, so it can't collide with a bucket."""


def display_url(url: str) -> str:
    """The URL without user info or query (they may carry credentials): safe to log or show."""
    parsed = urlparse(url)
    netloc = parsed.hostname or ""
    if parsed.port:
        netloc += f":{parsed.port}"
    return urlunparse((parsed.scheme, netloc, parsed.path, "", "", ""))


def parse_options(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise FailedPrecondition(f"LOOPML_OBJECT_STORE_OPTIONS is not valid JSON: {exc.msg}.") from None
    if not isinstance(value, dict):
        raise FailedPrecondition("LOOPML_OBJECT_STORE_OPTIONS must be a JSON object.")
    return value


def check_rel(rel: str, uri: str) -> str:
    """A bucket-relative object path with no empty, '.' or '..' segment (else InvalidArgument)."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts) or "\x00" in rel:
        raise InvalidArgument(f"Artifact URI {uri!r} escapes its bucket.")
    return "/".join(parts)


def info_token(info: dict[str, Any]) -> str:
    """A string that changes whenever the remote object changes (ETag, else mtime and size)."""
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    size = info.get("size")
    if etag:
        return f"{str(etag).strip(chr(34))}:{size}"
    return f"{info_mtime_ns(info)}:{size}"


def info_mtime_ns(info: dict[str, Any]) -> int:
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return int(value.timestamp() * 1e9)
        if isinstance(value, int | float):
            return int(value * 1e9)
        if isinstance(value, str):
            try:
                return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e9)
            except ValueError:
                continue
    return 0


_VERBS = {
    "info": "look up",
    "exists": "look up",
    "isdir": "look up",
    "find": "list",
    "ls": "list",
    "get_file": "read",
    "cat_file": "read",
    "put_file": "write",
    "pipe_file": "write",
    "rm_file": "delete",
    "makedirs": "create the directory of",
}
_SECRET_OPTION = re.compile(r"key|secret|token|password|passwd|credential|session|sas", re.IGNORECASE)
_SAFE_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9.]{0,63}$")


def secret_values(url: str, options: dict[str, Any]) -> list[str]:
    """Strings that must never be shown: the URL's user info, and the values of options whose
    name suggests a credential (at any depth, e.g. `client_kwargs.aws_secret_access_key`)."""
    parsed = urlparse(url)
    found = [v for v in (parsed.username, parsed.password) if v]

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, secret or bool(_SECRET_OPTION.search(str(k))))
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v, secret)
        elif secret and isinstance(value, str) and value:
            found.append(value)

    walk(options, False)
    return sorted({v for v in found if len(v) >= 3}, key=len, reverse=True)


def redact(text: str, secrets_: list[str]) -> str:
    for value in secrets_:
        text = text.replace(value, "***")
    return text


def error_reason(exc: BaseException) -> str:
    """The exception class, plus a short code when the backend gives one (botocore's
    `Error.Code`, an errno name): never the backend's free text (URLs, keys, request ids)."""
    code = None
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and isinstance(response.get("Error"), dict):
        code = response["Error"].get("Code")
    if code is None and isinstance(exc, OSError) and exc.errno:
        code = errno.errorcode.get(exc.errno)
    if isinstance(code, str) and _SAFE_CODE.match(code):
        return f"{type(exc).__name__} {code}"
    return type(exc).__name__


class _Guarded:
    """An fsspec file system whose failures (other than a missing path) become Unavailable (503)
    naming the store, the operation and the bucket/object, whatever the backend raises
    (OSError, botocore errors, ...). The backend's own message (which can carry endpoint URLs,
    key paths, request ids) goes only to the debug log, with credentials redacted."""

    def __init__(self, fs: Any, display: str, root: str, secrets_: list[str]) -> None:
        self._fs = fs
        self._display = display
        self._root = root
        self._secrets = secrets_

    def _subject(self, args: tuple[Any, ...]) -> str:
        """What the call was about, as a bucket URI (keys are `<root>/<bucket>/<name>`)."""
        for arg in args:
            if not isinstance(arg, str) or not (arg == self._root or arg.startswith(self._root + "/")):
                continue
            parts = arg[len(self._root) :].strip("/").split("/")
            if parts == [""]:
                return "the store's root"
            if parts[0] == META_DIR:  # .loopml/{gcs-meta,folders}/B/..., .loopml/buckets/B.json
                bucket = parts[2].removesuffix(".json") if len(parts) > 2 else ""
                return f"loopml's records of gs://{bucket}" if bucket else "loopml's records"
            return "gs://" + "/".join(parts)
        return "the store"

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._fs, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except (FileNotFoundError, LoopmlError):
                raise
            except Exception as exc:
                subject = self._subject(args)
                reason = error_reason(exc)
                log.warning("object store %s: %s of %s failed: %s", self._display, name, subject, reason)
                log.debug(
                    "object store %s: %s of %s failed: %s",
                    self._display,
                    name,
                    subject,
                    redact(f"{type(exc).__name__}: {exc}", self._secrets),
                )
                raise Unavailable(
                    f"The object store {self._display} failed to {_VERBS.get(name, name)} {subject} ({reason})."
                ) from None

        return call


class RemoteStore:
    """The buckets of one fsspec URL: keys, listings, transfers and the cache tokens."""

    def __init__(self, url: str, cache_dir: Path, options: dict[str, Any] | None = None) -> None:
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        self.url = url
        self.display = display_url(url)
        options = dict(options or {})
        if not url.startswith(("file:", "/")):
            # other servers write to the store too: never answer from a stale listing cache
            options.setdefault("use_listings_cache", False)
        hidden = secret_values(url, options)
        try:
            fs, root = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError) as exc:
            # ImportError: the backend (e.g. s3fs for s3://) is not installed
            raise FailedPrecondition(
                f"Cannot open the object store {self.display}: {redact(str(exc), hidden)}"
            ) from None
        self.root = str(root).rstrip("/")
        parsed = urlparse(url)
        if (parsed.username or parsed.password) and "@" in self.root:
            # the backend did not take the user info (s3fs, for one): it would be a bucket name
            raise FailedPrecondition(
                f"The object store URL {self.display} carries user info, which its backend does not "
                "use: give credentials in LOOPML_OBJECT_STORE_OPTIONS or the backend's own variables."
            )
        self.fs: Any = _Guarded(fs, self.display, self.root, hidden)
        self.is_local = isinstance(fs, LocalFileSystem)
        self.cache_dir = cache_dir
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    # -- keys ------------------------------------------------------------------------------
    def key(self, bucket: str, rel: str = "") -> str:
        base = f"{self.root}/{bucket}"
        return f"{base}/{rel}" if rel else base

    def meta_key(self, *parts: str) -> str:
        return "/".join([self.root, META_DIR, *parts])

    def confine(self, bucket: str, key: str, uri: str) -> None:
        """On a file-system backend, refuse keys whose real path leaves the bucket (symlinks)."""
        if not self.is_local:
            return
        base = os.path.realpath(self.key(bucket))
        real = os.path.realpath(key)
        if real != base and not real.startswith(base + os.sep):
            raise InvalidArgument(f"Artifact URI {uri!r} escapes its bucket.")

    def object_key(self, bucket: str, rel: str, uri: str | None = None) -> str:
        """The key of object `rel` of a bucket, checked with `confine`: every read, write and
        delete of one object goes through here, so a symlink out of the bucket is never used."""
        key = self.key(bucket, rel)
        self.confine(bucket, key, uri or f"gs://{bucket}/{rel}")
        return key

    # -- reads -----------------------------------------------------------------------------
    def info(self, key: str) -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = self.fs.info(key)
        except FileNotFoundError:
            return None
        return info

    def object_info(self, bucket: str, rel: str, uri: str) -> dict[str, Any] | None:
        """The info of the object at exactly `rel` (one lookup, no listing); None when there is
        none there (nothing, or only a prefix of other objects)."""
        if not rel:
            return None
        info = self.info(self.object_key(bucket, rel, uri))
        if info is None or info.get("type") == "directory":
            return None
        return info

    def has_objects(self, bucket: str, rel: str, uri: str) -> bool:
        """Whether there is an object at `rel` or below `rel/`, without listing them all: one
        lookup on an object store (a prefix is a directory there only while objects are under
        it), a walk that stops at the first file on a file-system store."""
        key = self.object_key(bucket, rel, uri) if rel else self.key(bucket)
        info = self.info(key)
        if info is None:
            return False
        if info.get("type") != "directory" or not self.is_local:
            return True
        for dirpath, _dirs, files in os.walk(key):
            for name in files:
                self.confine(bucket, os.path.join(dirpath, name), uri)
                return True
        return False

    def objects(
        self, bucket: str, rel: str, uri: str, *, as_prefix: bool = False
    ) -> dict[str, dict[str, Any]]:
        """{bucket-relative name: info} of the object at `rel` and of every object below `rel/`.

        With `as_prefix`, `rel` is a name prefix (`a/b` also matches `a/bc` and `a/b2/c`)."""
        name_prefix = as_prefix and bool(rel) and not rel.endswith("/")
        scan = posixpath.dirname(rel) if name_prefix else rel.rstrip("/")
        try:
            listing: dict[str, dict[str, Any]] = self.fs.find(self.key(bucket, scan), detail=True)
        except FileNotFoundError:
            listing = {}
        base = self.key(bucket) + "/"
        found: dict[str, dict[str, Any]] = {}
        for k, info in listing.items():
            if info.get("type") == "directory" or k.endswith("/") or not k.startswith(base):
                continue
            name = k[len(base) :]
            if name_prefix:
                ok = name.startswith(rel)
            else:
                ok = not scan or name == scan or name.startswith(scan + "/")
            if ok:
                self.confine(bucket, k, uri)
                found[name] = info
        return found

    def bucket_exists(self, bucket: str) -> bool:
        if self.fs.exists(self.meta_key("buckets", f"{bucket}.json")):
            return True
        try:
            return bool(self.fs.isdir(self.key(bucket)))
        except FileNotFoundError:
            return False

    def bucket_names(self) -> list[str]:
        names: set[str] = set()
        try:
            for entry in self.fs.ls(self.root, detail=True):
                name = posixpath.basename(str(entry["name"]).rstrip("/"))
                if entry.get("type") == "directory" and not name.startswith("."):
                    names.add(name)
        except FileNotFoundError:
            pass
        try:
            for entry in self.fs.ls(self.meta_key("buckets"), detail=False):
                base = posixpath.basename(str(entry))
                if base.endswith(".json"):
                    names.add(base[: -len(".json")])
        except FileNotFoundError:
            pass
        return sorted(names)

    # -- transfers -------------------------------------------------------------------------
    def _token_path(self, bucket: str, rel: str) -> Path:
        return self.cache_dir / bucket / f"{hashlib.sha1(rel.encode()).hexdigest()}.token"

    def cached_token(self, bucket: str, rel: str, local: Path) -> str | None:
        """The remote token the local copy was made from, if the local file is unchanged since."""
        try:
            token, size, mtime = self._token_path(bucket, rel).read_text().split("\n")
            st = local.stat()
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        if str(st.st_size) != size or str(st.st_mtime_ns) != mtime:
            return None
        return token

    def remember(
        self, bucket: str, rel: str, local: Path, token: str, st: os.stat_result | None = None
    ) -> None:
        """Record that `local` is a copy of the remote version `token`. `st`: the stat of the file
        taken before it was renamed to `local`, so a file another thread renamed there since
        does not match the record (and is fetched again) instead of passing for this version."""
        st = st or local.stat()
        path = self._token_path(bucket, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        tmp.write_text(f"{token}\n{st.st_size}\n{st.st_mtime_ns}")
        os.replace(tmp, path)

    def forget(self, bucket: str, rel: str) -> None:
        self._token_path(bucket, rel).unlink(missing_ok=True)

    def download(self, bucket: str, rel: str, local: Path, info: dict[str, Any]) -> bool:
        """Make `local` a copy of the object (no transfer when the cache is fresh); True if copied."""
        token = info_token(info)
        if self.cached_token(bucket, rel, local) == token:
            return False
        if local.is_dir():
            raise FailedPrecondition(
                f"gs://{bucket}/{rel} is an object in the store but a directory in the local cache."
            )
        local.parent.mkdir(parents=True, exist_ok=True)
        # `.NAME.tmp-DIGITS` (hidden from listings); unique per thread, not just per process
        key = self.object_key(bucket, rel)
        tmp = local.with_name(f".{local.name}.tmp-{os.getpid()}{secrets.randbelow(10**9):09d}")
        try:
            self.fs.get_file(key, str(tmp))
            st = tmp.stat()
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)
        self.remember(bucket, rel, local, token, st)
        return True

    def put(self, bucket: str, rel: str, source: Path) -> dict[str, Any]:
        """Upload the file `source` as object `rel` (no cache record); returns the stored info."""
        key = self.object_key(bucket, rel)
        if self.is_local:
            self.fs.makedirs(posixpath.dirname(key), exist_ok=True)
            self._local_atomic(key, lambda tmp: self.fs.put_file(str(source), tmp))
        else:
            self.fs.put_file(str(source), key)  # object stores make a PUT visible whole
        self.fs.invalidate_cache(posixpath.dirname(key))
        info = self.info(key)
        if info is None:  # eventual consistency: the write is acknowledged, the object is there
            info = {"size": source.stat().st_size, "name": key}
        return info

    def upload(self, bucket: str, rel: str, local: Path) -> dict[str, Any]:
        """Write-through of one local (cache) file; the cache then counts as fresh. Returns the info."""
        st = local.stat()
        info = self.put(bucket, rel, local)
        self.remember(bucket, rel, local, info_token(info), st)
        return info

    def remove(self, bucket: str, rel: str) -> None:
        key = self.object_key(bucket, rel)
        try:
            self.fs.rm_file(key)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(posixpath.dirname(key))
        self.forget(bucket, rel)

    # -- loopml's own records --------------------------------------------------------------
    def read_json(self, key: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.fs.cat_file(key))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def write_json(self, key: str, value: dict[str, Any]) -> None:
        data = json.dumps(value).encode()
        if self.is_local:
            self.fs.makedirs(posixpath.dirname(key), exist_ok=True)
            self._local_atomic(key, lambda tmp: self.fs.pipe_file(tmp, data))
        else:
            self.fs.pipe_file(key, data)

    def _local_atomic(self, key: str, write: Any) -> None:
        """A file-system store: write beside the store's records, then rename over `key`, so a
        reader (another server sharing the directory) sees the old file or the new one, never a
        part. The temp name lives under META_DIR, which listings never show."""
        tmp = self.meta_key("tmp", f"{uuid.uuid4().hex}.partial")
        self.fs.makedirs(posixpath.dirname(tmp), exist_ok=True)
        try:
            write(tmp)
            self.fs.mv(tmp, key)  # a rename on one file system
        except Unavailable as exc:  # name the object, not the temp file
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            subject = self.fs._subject((tmp,))
            raise Unavailable(exc.message.replace(subject, self.fs._subject((key,)))) from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def remove_key(self, key: str) -> None:
        try:
            self.fs.rm_file(key)
        except FileNotFoundError:
            pass
