"""Managed (tabular) datasets.

Revision ID: 0008_datasets
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_datasets"
down_revision = "0001_core"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "vertex_datasets",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("location", sa.String(64), nullable=False),
        sa.Column("dataset_id", sa.String(32), nullable=False),
        sa.Column("display_name", sa.String(1024), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("metadata_schema_uri", sa.Text, nullable=False),
        sa.Column("metadata_json", sa.JSON, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("update_time", TS, nullable=False),
        sa.UniqueConstraint("project", "location", "dataset_id"),
    )


def downgrade() -> None:
    op.drop_table("vertex_datasets")
