"""Training job tables: custom jobs and training pipelines (one row per resource).

A TrainingPipeline row points at the CustomJob row that runs it (`backing_job`); the job runner
only ever executes CustomJob rows. The full normalised request is kept in `spec` (camelCase
Vertex JSON), the outcome in `state`, `error`, `outputs` and the timestamps.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from loopml.metadata.tables import Base
from loopml.refs import now


class TrainingJobRow(Base):
    __tablename__ = "training_jobs"
    __table_args__ = (UniqueConstraint("project", "location", "collection", "job_id"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project: Mapped[str] = mapped_column(String(128))
    location: Mapped[str] = mapped_column(String(64))
    collection: Mapped[str] = mapped_column(String(32))  # customJobs | trainingPipelines
    job_id: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(1024))
    state: Mapped[str] = mapped_column(String(32), default="JOB_STATE_PENDING")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, default=None)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    backing_job: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    cancel_requested: Mapped[int] = mapped_column(Integer, default=0)
    log_path: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    start_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
