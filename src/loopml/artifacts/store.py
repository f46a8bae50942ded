"""The artifact store.

`gs://BUCKET/PATH` and `s3://BUCKET/PATH` map to `<artifact_root>/buckets/BUCKET/PATH` unless a
real object store is configured; `file://` URIs and plain paths are local files. Every bucket
path is checked: a URI that escapes its bucket root (`..`, absolute parts, symlinks out) is
refused with InvalidArgument. Registered artifacts are snapshotted under
`<artifact_root>/registry/...` and never changed afterwards; only files inside the store are
ever unpickled (see `is_inside`).

With a real object store (`LOOPML_OBJECT_STORE_URL`, see `loopml.artifacts.remote` and
docs/storage.md) bucket `B` lives at `<object_store_url>/B/...` and the local buckets directory
is a cache of it: `resolve` still maps a URI to its local (cache) path, `fetch` first downloads
what is behind the URI, `publish` uploads what loopml wrote locally. Registry snapshots stay
local: they are this server's private, immutable copies (its metadata database points at them
and its model servers load them from disk), made from the store at upload time. Without an
object store `fetch` is `resolve` and `publish` does nothing.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from loopml.artifacts.remote import RemoteStore, check_rel
from loopml.errors import FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger(__name__)

# \Z, not $: "$" also matches before a final newline
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]\Z")
_BUCKET_SCHEMES = ("gs", "s3")


def is_bucket_uri(uri: str) -> bool:
    return uri.startswith(("gs://", "s3://"))


TMP_NAME_RE = re.compile(r"^\..*\.tmp-\d+$")
"""Names of files being written (`.NAME.tmp-DIGITS`, renamed into place when whole): never an
object, so neither published nor listed."""


class ArtifactStore:
    def __init__(
        self,
        root: Path,
        object_store_url: str | None = None,
        object_store_options: dict[str, Any] | None = None,
    ) -> None:
        self.root = root.expanduser().resolve()
        self.buckets_dir = self.root / "buckets"
        self.registry_dir = self.root / "registry"
        self.buckets_dir.mkdir(parents=True, exist_ok=True)
        self.registry_dir.mkdir(parents=True, exist_ok=True)
        self.remote: RemoteStore | None = None
        if object_store_url:
            self.remote = RemoteStore(object_store_url, self.root / "object-cache", object_store_options)
            if self.remote.is_local:
                real = Path(self.remote.root).resolve()
                if real == self.root or real.is_relative_to(self.root) or self.root.is_relative_to(real):
                    raise FailedPrecondition(
                        f"The object store {self.remote.display} overlaps the artifact root {self.root}: "
                        "choose a directory outside it."
                    )

    # -- resolution ------------------------------------------------------------------------
    def bucket_path(self, bucket: str) -> Path:
        if not BUCKET_RE.match(bucket) or ".." in bucket:
            raise InvalidArgument(f"Invalid bucket name {bucket!r}.")
        return self.buckets_dir / bucket

    def resolve(self, uri: str) -> Path:
        """The local path behind a URI. Bucket URIs must stay inside their bucket."""
        if not isinstance(uri, str) or not uri:
            raise InvalidArgument("An artifact URI is required.")
        if "\x00" in uri:
            raise InvalidArgument("Artifact URI contains a NUL byte.")
        parsed = urlparse(uri)
        if parsed.scheme in _BUCKET_SCHEMES:
            bucket_root = self.bucket_path(parsed.netloc)
            rel = unquote(parsed.path).lstrip("/")
            return self._inside(bucket_root, rel, uri)
        if parsed.scheme == "file":
            return Path(unquote(parsed.path)).resolve()
        if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
            return Path(uri).expanduser().resolve()
        raise InvalidArgument(
            f"Unsupported artifact URI scheme {parsed.scheme!r} in {uri!r}: use gs://, s3://, file:// or a path."
        )

    def bucket_rel(self, uri: str) -> tuple[str, str] | None:
        """(bucket, checked relative path) of a gs:// or s3:// URI, else None."""
        if not is_bucket_uri(uri):
            return None
        parsed = urlparse(uri)
        self.bucket_path(parsed.netloc)
        rel = unquote(parsed.path).lstrip("/")
        checked = check_rel(rel, uri)
        return parsed.netloc, checked + ("/" if rel.endswith("/") and checked else "")

    # -- the object store (no-ops without one) ---------------------------------------------
    def _in_store(self, uri: str) -> tuple[RemoteStore, str, str] | None:
        """(object store, bucket, checked relative path) of a bucket URI when an object store is
        configured; None without one or for other URIs."""
        if self.remote is None:
            return None
        split = self.bucket_rel(uri)
        return None if split is None else (self.remote, *split)

    def fetch(self, uri: str) -> Path:
        """The local path behind a URI, for reading one file: with an object store, the object at
        exactly that URI is downloaded into the local cache first (when it changed). A URI naming
        a prefix (`gs://b/`, `gs://b/dir`) downloads nothing: one lookup, no listing; trees go
        through `fetch_files`."""
        path = self.resolve(uri)
        target = self._in_store(uri)
        if target is not None:
            remote, bucket, rel = target
            info = remote.object_info(bucket, rel, uri) if not rel.endswith("/") else None
            if info is not None:
                remote.download(bucket, rel, path, info)
        return path

    def fetch_files(self, uri: str) -> dict[str, Path]:
        """{bucket-relative name: local cached path} of the objects at/below a bucket URI in the
        object store (downloaded when changed); {} without an object store or for other URIs."""
        target = self._in_store(uri)
        if target is None:
            return {}
        remote, bucket, rel = target
        root = self.bucket_path(bucket)
        out: dict[str, Path] = {}
        for name, info in sorted(remote.objects(bucket, rel, uri).items()):
            local = self._inside(root, name, uri)
            remote.download(bucket, name, local, info)
            out[name] = local
        return out

    def publish(self, uri: str) -> int:
        """Upload the local files under a bucket URI (one file or a directory tree) that changed
        since they were last transferred; returns how many. A no-op without an object store."""
        target = self._in_store(uri)
        if target is None:
            return 0
        remote, bucket, _rel = target
        bucket_root = self.bucket_path(bucket).resolve()
        path = self.resolve(uri)
        if path.is_file():
            files = [path]
        elif path.is_dir():
            self._check_tree(path, bucket_root, uri)
            files = [
                Path(d) / f
                for d, _dirs, names in os.walk(path, followlinks=True)
                for f in sorted(names)
                if not TMP_NAME_RE.match(f)
            ]
        else:
            return 0
        uploaded: list[str] = []
        current = None
        try:
            for f in files:
                rel = f.relative_to(bucket_root).as_posix()
                if remote.cached_token(bucket, rel, f) is not None:
                    continue  # unchanged since it was downloaded or uploaded
                current = rel
                remote.upload(bucket, rel, f)
                uploaded.append(rel)
                current = None
        except BaseException:
            if current is not None and remote.is_local:
                uploaded.append(current)  # a file copy cut short leaves part of the file there
            self._unpublish(bucket, uploaded)
            raise
        return len(uploaded)

    def _unpublish(self, bucket: str, rels: list[str]) -> None:
        """After a failed publish: remove from the store what it uploaded (best effort, logged),
        so a failed write leaves no part of its output there. Objects it replaced stay gone."""
        assert self.remote is not None
        left = 0
        for rel in rels:
            try:
                self.remote.remove(bucket, rel)
            except Exception as exc:  # the store may be what failed: keep going, say what is left
                left += 1
                log.warning(
                    "could not remove gs://%s/%s after a failed publish: %s", bucket, rel, type(exc).__name__
                )
        if rels:
            log.warning(
                "publish to %s failed: removed %d uploaded object(s) of gs://%s, %d left",
                self.remote.display,
                len(rels) - left,
                bucket,
                left,
            )

    def discard(self, uris: list[str]) -> None:
        """Remove the local files and stored objects of a failed multi-file write (best effort,
        logged): the cleanup path of writers that publish file by file."""
        for uri in uris:
            try:
                self.remove(uri)
            except Exception as exc:
                log.warning("could not remove %s after a failed write: %s", uri, type(exc).__name__)

    def remove(self, uri: str) -> None:
        """Delete one object: the local file and, with an object store, the stored object."""
        path = self.resolve(uri)
        if path.is_file():
            path.unlink()
        target = self._in_store(uri)
        if target is not None:
            remote, bucket, rel = target
            remote.remove(bucket, rel)

    def _inside(self, base: Path, rel: str, uri: str) -> Path:
        checked = check_rel(rel, uri)  # no '..' segment
        target = base.joinpath(*checked.split("/")) if checked else base
        resolved = target.resolve()
        base_resolved = base.resolve()
        if resolved != base_resolved and not resolved.is_relative_to(base_resolved):
            raise InvalidArgument(f"Artifact URI {uri!r} escapes its bucket.")
        return resolved

    def uri_for(self, path: Path) -> str:
        """The gs:// URI of a path inside the buckets directory, else a file:// URI."""
        path = path.resolve()
        if path.is_relative_to(self.buckets_dir):
            rel = path.relative_to(self.buckets_dir).as_posix()
            return f"gs://{rel}"
        return path.as_uri()

    def is_inside(self, path: Path) -> bool:
        """True for paths inside the store; only such files may ever be unpickled."""
        return path.resolve().is_relative_to(self.root)

    # -- operations ------------------------------------------------------------------------
    def exists(self, uri: str) -> bool:
        target = self._in_store(uri)
        if target is not None:
            remote, bucket, rel = target
            return remote.has_objects(bucket, rel.rstrip("/"), uri)
        return self.resolve(uri).exists()

    def read_bytes(self, uri: str) -> bytes:
        path = self.fetch(uri)
        if not path.is_file():
            raise NotFound(f"No artifact at {uri}.")
        return path.read_bytes()

    def write_bytes(self, uri: str, data: bytes) -> Path:
        path = self.resolve(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self.publish(uri)
        return path

    def list(self, uri: str) -> list[str]:
        """URIs of every file below a prefix (directory or file-name prefix)."""
        target = self._in_store(uri)
        if target is not None:
            remote, bucket, rel = target
            scheme = uri.split("://", 1)[0]
            names = remote.objects(bucket, rel, uri, as_prefix=True)
            return sorted(f"{scheme}://{bucket}/{n}" for n in names)
        path = self.resolve(uri)
        if path.is_file():
            return [uri]
        base = uri.rstrip("/")
        if path.is_dir():
            return sorted(f"{base}/{p.relative_to(path).as_posix()}" for p in path.rglob("*") if p.is_file())
        parent = path.parent
        if not parent.is_dir():
            return []
        head = base.rsplit("/", 1)[0]
        out = []
        for p in parent.iterdir():
            if p.name.startswith(path.name):
                if p.is_file():
                    out.append(f"{head}/{p.name}")
                else:
                    out.extend(
                        f"{head}/{q.relative_to(parent).as_posix()}" for q in p.rglob("*") if q.is_file()
                    )
        return sorted(out)

    def snapshot(self, uri: str, *parts: str) -> Path:
        """Copy the artifacts at `uri` (file or directory) to an immutable registry location.

        Symbolic links are followed only where they stay inside the bucket (for bucket URIs);
        a link out of it, a dangling link, a special file or an unreadable file is refused with
        InvalidArgument and nothing is left behind.
        """
        for p in parts:
            if not p or "/" in p or p in (".", ".."):
                raise InvalidArgument(f"Invalid snapshot path component {p!r}.")
        target = self._in_store(uri)
        if target is not None:
            return self._snapshot_remote(uri, target, self.registry_dir.joinpath(*parts))
        source = self.resolve(uri)
        if not source.exists():
            raise InvalidArgument(f"artifactUri {uri!r} does not exist (looked in {source}).")
        if source.is_dir():
            parsed = urlparse(uri)
            confine = self.bucket_path(parsed.netloc).resolve() if parsed.scheme in _BUCKET_SCHEMES else None
            self._check_tree(source, confine, uri)

        def fill(tmp: Path) -> None:
            if source.is_dir():
                shutil.copytree(source, tmp, symlinks=False)
            else:
                tmp.mkdir(parents=True)
                shutil.copy2(source, tmp / source.name)

        return self._write_snapshot(uri, self.registry_dir.joinpath(*parts), fill)

    def _snapshot_remote(self, uri: str, stored: tuple[RemoteStore, str, str], dest: Path) -> Path:
        """A snapshot of exactly the stored objects at/below `uri` (via the local cache)."""
        remote, _bucket, rel = stored
        rel = rel.rstrip("/")
        files = self.fetch_files(uri)
        if not files:
            raise InvalidArgument(
                f"artifactUri {uri!r} does not exist (looked in the object store {remote.display})."
            )

        def fill(tmp: Path) -> None:
            tmp.mkdir(parents=True)
            for name, local in files.items():
                inner = Path(local.name) if name == rel else Path(name[len(rel) + 1 :] if rel else name)
                target = tmp / inner
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(local, target)

        return self._write_snapshot(uri, dest, fill)

    @staticmethod
    def _write_snapshot(uri: str, dest: Path, fill: Callable[[Path], None]) -> Path:
        """Replace `dest` with what `fill` writes into `<dest>.partial` (which it creates), renamed
        into place only when whole; a copy error leaves nothing and is an InvalidArgument."""
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            fill(tmp)
        except OSError as exc:  # shutil.Error (copytree's list of failures) is an OSError
            shutil.rmtree(tmp, ignore_errors=True)
            raise InvalidArgument(
                f"Could not copy the artifacts at {uri!r}: {_first_copy_error(exc)}"
            ) from None
        os.replace(tmp, dest)
        return dest

    @staticmethod
    def _check_tree(source: Path, confine: Path | None, uri: str) -> None:
        """Refuse links out of `confine` (the bucket root), dangling links and special files."""
        seen: set[Path] = set()
        for dirpath, dirnames, filenames in os.walk(source, followlinks=True):
            here = Path(dirpath)
            real = here.resolve()
            if real in seen:  # a link back to a directory already copied: a loop, or a duplicate
                raise InvalidArgument(
                    f"artifactUri {uri!r}: {here.relative_to(source)} links to a directory seen before (a loop?)."
                )
            seen.add(real)
            if confine is not None and not here.resolve().is_relative_to(confine):
                raise InvalidArgument(
                    f"artifactUri {uri!r}: {here.relative_to(source)} links out of its bucket."
                )
            for name in filenames + dirnames:
                entry = here / name
                rel = entry.relative_to(source)
                if entry.is_symlink():
                    if not entry.exists():
                        raise InvalidArgument(f"artifactUri {uri!r}: {rel} is a dangling symbolic link.")
                    if confine is not None and not entry.resolve().is_relative_to(confine):
                        raise InvalidArgument(f"artifactUri {uri!r}: {rel} links out of its bucket.")
                if name in filenames and not entry.is_file():
                    raise InvalidArgument(f"artifactUri {uri!r}: {rel} is not a regular file.")


def _first_copy_error(exc: BaseException) -> str:
    """A short reason from an OSError or shutil.Error (which carries a list of per-file errors)."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        src, _dst, why = exc.args[0][0]
        more = len(exc.args[0]) - 1
        return f"{src}: {why}" + (f" (and {more} more)" if more else "")
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)
