"""Batch prediction jobs and their committed chunks.

Revision ID: 0006_batch
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_batch"
down_revision = "0001_core"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "batch_prediction_jobs",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("location", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(20), nullable=False),
        sa.Column("display_name", sa.String(1024), nullable=False),
        sa.Column("state", sa.String(40), nullable=False),
        sa.Column("model_name", sa.String(512), nullable=False),
        sa.Column("model_version_id", sa.String(20), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("work", sa.JSON, nullable=False),
        sa.Column("output_info", sa.JSON, nullable=False),
        sa.Column("error", sa.JSON, nullable=True),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("total_count", sa.BigInteger, nullable=False),
        sa.Column("successful_count", sa.BigInteger, nullable=False),
        sa.Column("failed_count", sa.BigInteger, nullable=False),
        sa.Column("chunk_count", sa.Integer, nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("start_time", TS, nullable=True),
        sa.Column("end_time", TS, nullable=True),
        sa.Column("update_time", TS, nullable=False),
        sa.UniqueConstraint("project", "location", "job_id"),
    )
    op.create_index("ix_batch_prediction_jobs_state", "batch_prediction_jobs", ["state"])
    op.create_table(
        "batch_prediction_chunks",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "job_pk",
            sa.Integer,
            sa.ForeignKey("batch_prediction_jobs.pk", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("chunk_index", sa.Integer, nullable=False),
        sa.Column("successful_count", sa.BigInteger, nullable=False),
        sa.Column("failed_count", sa.BigInteger, nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.UniqueConstraint("job_pk", "chunk_index"),
    )
    op.create_index("ix_batch_prediction_chunks_job_pk", "batch_prediction_chunks", ["job_pk"])


def downgrade() -> None:
    op.drop_table("batch_prediction_chunks")
    op.drop_table("batch_prediction_jobs")
