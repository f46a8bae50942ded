"""Registry tables beyond the core: model evaluations (one version, many evaluations)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from loopml.metadata.tables import Base
from loopml.refs import now


class ModelEvaluationRow(Base):
    __tablename__ = "model_evaluations"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    evaluation_id: Mapped[str] = mapped_column(String(32), unique=True)
    model_version_pk: Mapped[int] = mapped_column(
        ForeignKey("model_versions.pk", ondelete="CASCADE"), index=True
    )
    display_name: Mapped[str] = mapped_column(String(1024), default="")
    metrics_schema_uri: Mapped[str] = mapped_column(Text, default="")
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
