"""Batch prediction tables: one row per BatchPredictionJob and one per committed chunk.

A chunk row is written in the same metadata transaction that advances the job's counters, after the
chunk's output files are durably in place; a job resumed after a crash recomputes only the chunks
that have no row here (chunk outputs are named deterministically, so a recomputed chunk overwrites
whatever a crashed attempt left behind).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from loopml.metadata.tables import Base
from loopml.refs import now


class BatchPredictionJobRow(Base):
    __tablename__ = "batch_prediction_jobs"
    __table_args__ = (UniqueConstraint("project", "location", "job_id"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project: Mapped[str] = mapped_column(String(128))
    location: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(20))
    display_name: Mapped[str] = mapped_column(String(1024))
    state: Mapped[str] = mapped_column(String(40), index=True)
    model_name: Mapped[str] = mapped_column(String(512))
    model_version_id: Mapped[str] = mapped_column(String(20))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """The job as requested (Vertex JSON, normalised)."""
    work: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """Internal run state: staged input, chunk size, output names, prediction type."""
    output_info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    total_count: Mapped[int] = mapped_column(BigInteger, default=0)
    successful_count: Mapped[int] = mapped_column(BigInteger, default=0)
    failed_count: Mapped[int] = mapped_column(BigInteger, default=0)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    start_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class BatchPredictionChunkRow(Base):
    __tablename__ = "batch_prediction_chunks"
    __table_args__ = (UniqueConstraint("job_pk", "chunk_index"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_pk: Mapped[int] = mapped_column(
        ForeignKey("batch_prediction_jobs.pk", ondelete="CASCADE"), index=True
    )
    chunk_index: Mapped[int] = mapped_column(Integer)
    successful_count: Mapped[int] = mapped_column(BigInteger, default=0)
    failed_count: Mapped[int] = mapped_column(BigInteger, default=0)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
