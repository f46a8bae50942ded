"""The image catalog: image references, digests and tags, kept as files under `$LOOPML_HOME/images`.

    images/<hex digest>/image.json   the image config (workdir, env, entrypoint, cmd, ports, env spec)
    images/<hex digest>/root/        the snapshot of the build context after COPY/ADD/WORKDIR
    images/<hex digest>/pkgs/        local packages installed by `RUN pip install .` (env rebuilds)
    images/tags.json                 {"name:tag": "sha256:<hex>"}, rewritten atomically under a lock

References: `name`, `name:tag`, registry URIs (`gcr.io/p/name:tag`,
`us-central1-docker.pkg.dev/p/repo/name:tag`, `localhost:5000/name`), `name@sha256:<hex>`,
`sha256:<hex>` and a unique hex prefix of at least 12 characters. `docker.io/library/x` is `x`.
The CLI writes the catalog and the server reads the same files, so no server is needed to build.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopml.errors import InvalidArgument, NotFound

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:localhost(?::\d+)?|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?::\d+)?|[A-Za-z0-9-]+:\d+)"
_NAME_RE = re.compile(rf"^(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}\Z")
_HEX_RE = re.compile(r"^[a-f0-9]{64}\Z")


@dataclass(frozen=True)
class ImageRef:
    name: str
    tag: str | None = "latest"
    digest: str | None = None  # hex, without "sha256:"

    @property
    def key(self) -> str:
        return f"{self.name}:{self.tag}"

    def __str__(self) -> str:
        if self.digest:
            return f"{self.name}@sha256:{self.digest}" if self.name else f"sha256:{self.digest}"
        return self.key


def parse_ref(text: str) -> ImageRef:
    """Parse and normalise an image reference; InvalidArgument names what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgument("An image reference is required (NAME[:TAG] or NAME@sha256:DIGEST).")
    ref = text.strip()
    if ref.startswith("sha256:"):
        hexd = ref[len("sha256:") :]
        if not _HEX_RE.match(hexd):
            raise InvalidArgument(f"Invalid image digest {ref!r}: expected sha256:<64 hex digits>.")
        return ImageRef("", None, hexd)
    digest = None
    if "@" in ref:
        ref, _, d = ref.partition("@")
        if not d.startswith("sha256:") or not _HEX_RE.match(d[len("sha256:") :]):
            raise InvalidArgument(f"Invalid image digest in {text!r}: expected @sha256:<64 hex digits>.")
        digest = d[len("sha256:") :]
    tag: str | None = None
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        ref, tag = ref[:colon], ref[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise InvalidArgument(f"Invalid image tag {tag!r} in {text!r}.")
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/", "index.docker.io/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix) :]
            break
    if not _NAME_RE.match(ref):
        raise InvalidArgument(
            f"Invalid image name {ref!r} in {text!r}: lower-case components separated by '/', "
            "optionally after a registry host (gcr.io/p/name, REGION-docker.pkg.dev/p/repo/name)."
        )
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(ref, tag, digest)


class Catalog:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._tags_file = self.root / "tags.json"

    # -- tags ------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".catalog.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def tags(self) -> dict[str, str]:
        try:
            data = json.loads(self._tags_file.read_text())
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in data.items()}

    def _write_tags(self, tags: dict[str, str]) -> None:
        tmp = self._tags_file.with_name(f".tags.json.{os.getpid()}")
        tmp.write_text(json.dumps(dict(sorted(tags.items())), indent=2))
        os.replace(tmp, self._tags_file)

    def tag(self, ref: ImageRef, digest: str) -> None:
        if ref.tag is None:
            raise InvalidArgument(f"Cannot tag {ref}: a tag (NAME:TAG) is required.")
        with self._locked():
            tags = self.tags()
            tags[ref.key] = f"sha256:{digest}"
            self._write_tags(tags)

    def untag(self, ref: ImageRef) -> str | None:
        """Remove a tag; returns the digest it pointed at."""
        with self._locked():
            tags = self.tags()
            value = tags.pop(ref.key, None)
            if value is not None:
                self._write_tags(tags)
        return value[len("sha256:") :] if value else None

    def tags_of(self, digest: str) -> list[str]:
        return sorted(k for k, v in self.tags().items() if v == f"sha256:{digest}")

    # -- images ----------------------------------------------------------------------------
    def image_dir(self, digest: str) -> Path:
        if not _HEX_RE.match(digest):
            raise InvalidArgument(f"Invalid image digest {digest!r}.")
        return self.root / digest

    def find_digest(self, text: str) -> str | None:
        """The digest an image reference (or digest prefix) names, or None."""
        stripped = text.strip().removeprefix("sha256:")
        if re.fullmatch(r"[a-f0-9]{12,64}", stripped):
            matches = [d for d in self.digests() if d.startswith(stripped)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise InvalidArgument(f"Digest prefix {stripped!r} is ambiguous; give more characters.")
            if text.strip().startswith("sha256:") and len(stripped) < 64:
                return None
        ref = parse_ref(text)
        if ref.digest:
            return ref.digest if (self.root / ref.digest / "image.json").is_file() else None
        value = self.tags().get(ref.key)
        return value[len("sha256:") :] if value else None

    def digests(self) -> list[str]:
        return sorted(
            p.name for p in self.root.iterdir() if _HEX_RE.match(p.name) and (p / "image.json").is_file()
        )

    def config(self, digest: str) -> dict[str, Any]:
        path = self.image_dir(digest) / "image.json"
        if not path.is_file():
            raise NotFound(f"No image with digest sha256:{digest}.")
        data: dict[str, Any] = json.loads(path.read_text())
        data["tags"] = self.tags_of(digest)
        data["path"] = str(path.parent)
        return data

    def add(self, build_dir: Path, digest: str) -> Path:
        """Move a finished build into place (identical content may already be there)."""
        final = self.image_dir(digest)
        if (final / "image.json").is_file():
            shutil.rmtree(build_dir, ignore_errors=True)
            return final
        if final.exists():
            shutil.rmtree(final)
        os.rename(build_dir, final)
        return final

    def remove(self, digest: str) -> None:
        shutil.rmtree(self.image_dir(digest), ignore_errors=True)
