"""Core metadata tables: models, versions, aliases, endpoints, deployed models, operations.

Other subsystems declare their tables in their own modules on the same `Base` and add an
Alembic migration whose `down_revision` is "0001_core" (branches are upgraded with `heads`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from loopml.refs import now


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ModelRow(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("project", "location", "model_id"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project: Mapped[str] = mapped_column(String(128))
    location: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[str] = mapped_column(String(63))
    display_name: Mapped[str] = mapped_column(String(1024))
    description: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    next_version: Mapped[int] = mapped_column(Integer, default=1)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    versions: Mapped[list[ModelVersionRow]] = relationship(
        back_populates="model", cascade="all, delete-orphan", order_by="ModelVersionRow.pk"
    )


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_pk", "version_id"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_pk: Mapped[int] = mapped_column(ForeignKey("models.pk", ondelete="CASCADE"), index=True)
    version_id: Mapped[str] = mapped_column(String(20))
    version_description: Mapped[str] = mapped_column(Text, default="")
    display_name: Mapped[str] = mapped_column(String(1024))
    description: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    artifact_uri: Mapped[str] = mapped_column(Text, default="")
    snapshot_path: Mapped[str] = mapped_column(Text, default="")
    """Immutable copy of the artifacts inside the artifact store, taken at upload."""
    container_spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    framework: Mapped[str] = mapped_column(String(64), default="")
    """Resolved serving runtime: sklearn, xgboost, bqml-kmeans, python, custom-container, ..."""
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """Other Vertex fields kept verbatim (predictSchemata, metadata, explanationSpec, ...)."""
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """What produced this version: {"kind": "upload"|"custom_job"|"training_pipeline"|"sql"|"pipeline", ...}."""
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    model: Mapped[ModelRow] = relationship(back_populates="versions")


class VersionAliasRow(Base):
    __tablename__ = "version_aliases"
    __table_args__ = (UniqueConstraint("model_pk", "alias"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_pk: Mapped[int] = mapped_column(ForeignKey("models.pk", ondelete="CASCADE"), index=True)
    version_pk: Mapped[int] = mapped_column(ForeignKey("model_versions.pk", ondelete="CASCADE"), index=True)
    alias: Mapped[str] = mapped_column(String(128))


class EndpointRow(Base):
    __tablename__ = "endpoints"
    __table_args__ = (UniqueConstraint("project", "location", "endpoint_id"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project: Mapped[str] = mapped_column(String(128))
    location: Mapped[str] = mapped_column(String(64))
    endpoint_id: Mapped[str] = mapped_column(String(63))
    display_name: Mapped[str] = mapped_column(String(1024))
    description: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    traffic_split: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    logging_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    etag: Mapped[str] = mapped_column(String(64), default="")
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    deployed_models: Mapped[list[DeployedModelRow]] = relationship(
        back_populates="endpoint", cascade="all, delete-orphan", order_by="DeployedModelRow.pk"
    )


class DeployedModelRow(Base):
    __tablename__ = "deployed_models"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployed_model_id: Mapped[str] = mapped_column(String(20), unique=True)
    endpoint_pk: Mapped[int] = mapped_column(ForeignKey("endpoints.pk", ondelete="CASCADE"), index=True)
    model_version_pk: Mapped[int] = mapped_column(
        ForeignKey("model_versions.pk", ondelete="RESTRICT"), index=True
    )
    display_name: Mapped[str] = mapped_column(String(1024), default="")
    resources: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """{"dedicatedResources": {...}} or {"automaticResources": {...}} as sent (enums normalised)."""
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    endpoint: Mapped[EndpointRow] = relationship(back_populates="deployed_models")
    model_version: Mapped[ModelVersionRow] = relationship()


class OperationRow(Base):
    __tablename__ = "operations"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(512), unique=True)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    metadata_json: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
