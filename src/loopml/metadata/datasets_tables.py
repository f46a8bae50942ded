"""Managed dataset table: one row per Vertex `Dataset` (tabular: a pointer at CSV objects or a table).

A tabular dataset holds no data of its own: `metadata_json` is the Vertex `metadata` as sent
(`inputConfig.gcsSource.uri[]` or `inputConfig.bigquerySource.uri`), and training pipelines read
the source when they start.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from loopml.metadata.tables import Base
from loopml.refs import now


class DatasetRow(Base):
    __tablename__ = "vertex_datasets"
    __table_args__ = (UniqueConstraint("project", "location", "dataset_id"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project: Mapped[str] = mapped_column(String(128))
    location: Mapped[str] = mapped_column(String(64))
    dataset_id: Mapped[str] = mapped_column(String(32))
    display_name: Mapped[str] = mapped_column(String(1024))
    description: Mapped[str] = mapped_column(Text, default="")
    metadata_schema_uri: Mapped[str] = mapped_column(Text)
    metadata_json: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    etag: Mapped[str] = mapped_column(String(64), default="")
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
