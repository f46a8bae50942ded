"""Registry extras: model evaluations.

Revision ID: 0007_registry_extra
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_registry_extra"
down_revision = "0001_core"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "model_evaluations",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("evaluation_id", sa.String(32), nullable=False, unique=True),
        sa.Column(
            "model_version_pk",
            sa.Integer,
            sa.ForeignKey("model_versions.pk", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("display_name", sa.String(1024), nullable=False),
        sa.Column("metrics_schema_uri", sa.Text, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("extra", sa.JSON, nullable=False),
        sa.Column("create_time", TS, nullable=False),
    )
    op.create_index("ix_model_evaluations_model_version_pk", "model_evaluations", ["model_version_pk"])


def downgrade() -> None:
    op.drop_table("model_evaluations")
