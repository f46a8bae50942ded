"""The artifact store.

`gs://BUCKET/PATH` and `s3://BUCKET/PATH` map to `<artifact_root>/buckets/BUCKET/PATH` unless a
real object store is configured; `file://` URIs and plain paths are local files. Every bucket
path is checked: a URI that escapes its bucket root (`..`, absolute parts, symlinks out) is
refused with InvalidArgument. Registered artifacts are snapshotted under
`<artifact_root>/registry/...` and never changed afterwards; only files inside the store are
ever unpickled (see `is_inside`).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

from loopml.errors import InvalidArgument, NotFound

BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]$")
_BUCKET_SCHEMES = ("gs", "s3")


def is_bucket_uri(uri: str) -> bool:
    return uri.startswith(("gs://", "s3://"))


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.buckets_dir = self.root / "buckets"
        self.registry_dir = self.root / "registry"
        self.buckets_dir.mkdir(parents=True, exist_ok=True)
        self.registry_dir.mkdir(parents=True, exist_ok=True)

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

    def _inside(self, base: Path, rel: str, uri: str) -> Path:
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            raise InvalidArgument(f"Artifact URI {uri!r} escapes its bucket.")
        target = base.joinpath(*parts) if parts else base
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
        return self.resolve(uri).exists()

    def read_bytes(self, uri: str) -> bytes:
        path = self.resolve(uri)
        if not path.is_file():
            raise NotFound(f"No artifact at {uri}.")
        return path.read_bytes()

    def write_bytes(self, uri: str, data: bytes) -> Path:
        path = self.resolve(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path

    def list(self, uri: str) -> list[str]:
        """URIs of every file below a prefix (directory or file-name prefix)."""
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
        source = self.resolve(uri)
        if not source.exists():
            raise InvalidArgument(f"artifactUri {uri!r} does not exist (looked in {source}).")
        for p in parts:
            if not p or "/" in p or p in (".", ".."):
                raise InvalidArgument(f"Invalid snapshot path component {p!r}.")
        if source.is_dir():
            parsed = urlparse(uri)
            confine = self.bucket_path(parsed.netloc).resolve() if parsed.scheme in _BUCKET_SCHEMES else None
            self._check_tree(source, confine, uri)
        dest = self.registry_dir.joinpath(*parts)
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            if source.is_dir():
                shutil.copytree(source, tmp, symlinks=False)
            else:
                tmp.mkdir(parents=True)
                shutil.copy2(source, tmp / source.name)
        except (OSError, shutil.Error) as exc:
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
