"""The `/gcs/BUCKET/...` view that Vertex jobs get (Cloud Storage FUSE), without FUSE.

Buckets are real directories: `gs://B/P` is `<artifact_root>/buckets/B/P` (see `ArtifactStore`).
Processes started by loopml get `LOOPML_GCS_ROOT=<artifact_root>/buckets`, and code that
loopml controls rewrites `gs://B/P` with `gcs_path()`. User code that hard-codes `/gcs/B/P`
needs the optional mount: a symlink `/gcs -> <artifact_root>/buckets`, made by
`loopml server --gcs-mount /gcs` (or `LOOPML_GCS_MOUNT=/gcs`) when the path is free and writable.
Nothing requires the link; without it `gcs_path()` returns the real directory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from loopml.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)


class GcsView:
    def __init__(self, buckets_dir: Path, mount: Path | None = None) -> None:
        self.buckets_dir = buckets_dir.resolve()
        self.mount = mount

    @property
    def root(self) -> Path:
        """Where `/gcs/` points for processes: the mount when it is in place, else the real dir."""
        if self.mount is not None and self.mount_ok():
            return self.mount
        return self.buckets_dir

    def mount_ok(self) -> bool:
        return self.mount is not None and self.mount.resolve() == self.buckets_dir

    def gcs_path(self, uri: str) -> str:
        """`gs://B/P` (or `/gcs/B/P`) → a local path under the view; other values unchanged."""
        if uri.startswith("gs://"):
            rest = uri[len("gs://") :]
        elif uri.startswith("/gcs/"):
            rest = uri[len("/gcs/") :]
        else:
            return uri
        parts = [p for p in rest.split("/") if p not in ("", ".")]
        if ".." in parts or "\x00" in rest:
            raise InvalidArgument(f"{uri!r} escapes its bucket.")
        path = str(self.root.joinpath(*parts)) if parts else str(self.root)
        return path + ("/" if rest.endswith("/") and parts else "")

    def gcs_uri(self, path: str | Path) -> str | None:
        """The `gs://` URI of a local path inside the view, else None."""
        p = Path(path)
        for base in (self.buckets_dir, self.mount):
            if base is None:
                continue
            try:
                rel = p.relative_to(base)
            except ValueError:
                continue
            return "gs://" + rel.as_posix()
        return None

    def env(self) -> dict[str, str]:
        """Variables for a job or replica process."""
        # gcsfs >= 2025 probes bucket types over gRPC (no emulator speaks it): keep it on JSON/HTTP.
        out = {"LOOPML_GCS_ROOT": str(self.buckets_dir), "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
        if self.mount_ok():
            out["LOOPML_GCS_MOUNT"] = str(self.mount)
        return out

    def mount_hook(self) -> None:
        """Start hook for the server: make the link, log (never fail) when it cannot be made."""
        try:
            self.ensure_mount()
        except FailedPrecondition as exc:
            log.warning("%s", exc.message)

    def ensure_mount(self) -> bool:
        """Create the `/gcs` symlink to the buckets dir; True when it is in place."""
        if self.mount is None:
            return False
        mount = self.mount
        if mount.is_symlink():
            if mount.resolve() == self.buckets_dir:
                return True
            target = os.readlink(mount)
            raise FailedPrecondition(
                f"{mount} already links to {target}; remove it or choose another --gcs-mount path."
            )
        if mount.exists():
            raise FailedPrecondition(f"{mount} exists and is not a link; choose another --gcs-mount path.")
        try:
            mount.parent.mkdir(parents=True, exist_ok=True)
            mount.symlink_to(self.buckets_dir, target_is_directory=True)
        except OSError as exc:
            log.warning("could not create the %s view: %s (use LOOPML_GCS_ROOT instead)", mount, exc)
            return False
        log.info("%s -> %s", mount, self.buckets_dir)
        return True
