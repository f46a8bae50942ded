"""Vertex managed tabular datasets: the `datasets` resource and training splits of one.

`build(platform)` constructs the DatasetService; `services.build` calls it after the warehouse and
before training (training pipelines with `inputDataConfig.datasetId` use it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loopml.datasets.service import TABULAR_SCHEMA, DatasetService

if TYPE_CHECKING:
    from loopml.platform import Platform

__all__ = ["TABULAR_SCHEMA", "DatasetService", "build"]


def build(platform: Platform) -> DatasetService:
    return DatasetService(platform.db, platform.artifacts, lambda: platform.services.get("warehouse"))
