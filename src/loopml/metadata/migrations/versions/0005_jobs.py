"""Training jobs: custom jobs and training pipelines.

Revision ID: 0005_jobs
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_jobs"
down_revision = "0001_core"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "training_jobs",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("location", sa.String(64), nullable=False),
        sa.Column("collection", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(1024), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("error", sa.JSON, nullable=True),
        sa.Column("outputs", sa.JSON, nullable=False),
        sa.Column("backing_job", sa.String(64), nullable=True),
        sa.Column("pid", sa.Integer, nullable=True),
        sa.Column("cancel_requested", sa.Integer, nullable=False),
        sa.Column("log_path", sa.Text, nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("start_time", TS, nullable=True),
        sa.Column("end_time", TS, nullable=True),
        sa.Column("update_time", TS, nullable=False),
        sa.UniqueConstraint("project", "location", "collection", "job_id"),
    )
    op.create_index("ix_training_jobs_state", "training_jobs", ["state"])


def downgrade() -> None:
    op.drop_index("ix_training_jobs_state", "training_jobs")
    op.drop_table("training_jobs")
