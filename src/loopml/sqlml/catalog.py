"""Where SQL models live: one directory per model under `<artifact_root>/sqlml/models/`.

    <root>/sqlml/models/<project>/<dataset>/<model>/
        entry.json      {"generation", "created_ms", "statement", "registry": {...} | null, ...}
        artifact/       the model directory (loopml_model.json, model.json, params.npz, ...)

A new model is assembled in `<root>/sqlml/staging/<id>/` and moved into place with one rename,
so a failed CREATE MODEL leaves nothing behind and readers never see a half-written model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopml.errors import NotFound
from loopml.sqlml.model import SqlModel
from loopml.sqlml.statements import ModelPath

log = logging.getLogger(__name__)


@dataclass
class Entry:
    path: ModelPath
    directory: Path
    record: dict[str, Any]

    @property
    def artifact_dir(self) -> Path:
        return self.directory / "artifact"

    @property
    def registry(self) -> dict[str, Any] | None:
        reg = self.record.get("registry")
        return reg if isinstance(reg, dict) else None


class Catalog:
    def __init__(self, root: Path) -> None:
        self.root = root / "sqlml"
        self.models_dir = self.root / "models"
        self.staging_dir = self.root / "staging"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._cache: dict[str, SqlModel] = {}
        for leftover in self.staging_dir.iterdir():  # from a crash mid-CREATE
            shutil.rmtree(leftover, ignore_errors=True)

    def _dir(self, path: ModelPath) -> Path:
        # Names are validated by statements.resolve_path (letters, digits, _ . : -), never '..'.
        return self.models_dir / path.project / path.dataset.lower() / path.model.lower()

    def find(self, path: ModelPath) -> Entry | None:
        directory = self._dir(path)
        try:
            record = json.loads((directory / "entry.json").read_text())
        except (OSError, ValueError):
            return None
        stored = record.get("path") or {}
        real = ModelPath(
            stored.get("project", path.project),
            stored.get("dataset", path.dataset),
            stored.get("model", path.model),
        )
        return Entry(real, directory, record)

    def get(self, path: ModelPath) -> Entry:
        entry = self.find(path)
        if entry is None:
            raise NotFound(f"Not found: Model {path.project}:{path.dataset}.{path.model}")
        return entry

    def load(self, entry: Entry) -> SqlModel:
        key = str(entry.record.get("generation"))
        with self.lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        model = SqlModel.load(entry.artifact_dir)
        with self.lock:
            if len(self._cache) > 32:
                self._cache.clear()
            self._cache[key] = model
        return model

    def list(self, project: str, dataset: str) -> list[Entry]:
        base = self.models_dir / project / dataset.lower()
        if not base.is_dir():
            return []
        out = []
        for d in sorted(base.iterdir()):
            entry = self.find(ModelPath(project, dataset, d.name))
            if entry is not None:
                out.append(entry)
        return out

    # -- writes ----------------------------------------------------------------------------
    def stage(self, path: ModelPath, model: SqlModel, record: dict[str, Any]) -> Path:
        """Write a model to a fresh staging directory (not yet visible)."""
        staging = self.staging_dir / uuid.uuid4().hex
        model.save(staging / "artifact")
        record = {
            **record,
            "generation": uuid.uuid4().hex,
            "path": {"project": path.project, "dataset": path.dataset, "model": path.model},
        }
        (staging / "entry.json").write_text(json.dumps(record, indent=1))
        return staging

    def swap_in(self, path: ModelPath, staging: Path) -> Path | None:
        """Move a staged model into place; the previous one (if any) is parked and returned."""
        target = self._dir(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        parked = None
        if target.exists():
            parked = self.staging_dir / f"old-{uuid.uuid4().hex}"
            os.replace(target, parked)
        try:
            os.replace(staging, target)
        except OSError:
            if parked is not None:
                os.replace(parked, target)
            raise
        return parked

    def rollback(self, path: ModelPath, parked: Path | None) -> None:
        """Undo swap_in: remove the new model and put the parked one back."""
        target = self._dir(path)
        if target.exists():
            trash = self.staging_dir / f"del-{uuid.uuid4().hex}"
            os.replace(target, trash)
            shutil.rmtree(trash, ignore_errors=True)
        if parked is not None:
            os.replace(parked, target)

    def set_registry(self, entry: Entry, registry: dict[str, Any] | None) -> None:
        self.update_record(entry, {"registry": registry})

    def update_record(self, entry: Entry, changes: dict[str, Any]) -> None:
        """Replace entry.json atomically with `changes` applied (metadata, registry link)."""
        self.write_record(entry, {**entry.record, **changes})

    def write_record(self, entry: Entry, record: dict[str, Any]) -> None:
        """Replace entry.json atomically with `record` (also: put a previous record back)."""
        tmp = entry.directory / ".entry.json.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, entry.directory / "entry.json")
        entry.record = record

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def delete(self, entry: Entry) -> None:
        trash = self.staging_dir / f"del-{uuid.uuid4().hex}"
        os.replace(entry.directory, trash)
        shutil.rmtree(trash, ignore_errors=True)
