"""Core registry and endpoint tables.

Revision ID: 0001_core
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_core"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("location", sa.String(64), nullable=False),
        sa.Column("model_id", sa.String(63), nullable=False),
        sa.Column("display_name", sa.String(1024), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("next_version", sa.Integer, nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("update_time", TS, nullable=False),
        sa.UniqueConstraint("project", "location", "model_id"),
    )
    op.create_table(
        "model_versions",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_pk", sa.Integer, sa.ForeignKey("models.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("version_id", sa.String(20), nullable=False),
        sa.Column("version_description", sa.Text, nullable=False),
        sa.Column("display_name", sa.String(1024), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("artifact_uri", sa.Text, nullable=False),
        sa.Column("snapshot_path", sa.Text, nullable=False),
        sa.Column("container_spec", sa.JSON, nullable=False),
        sa.Column("framework", sa.String(64), nullable=False),
        sa.Column("extra", sa.JSON, nullable=False),
        sa.Column("lineage", sa.JSON, nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("update_time", TS, nullable=False),
        sa.UniqueConstraint("model_pk", "version_id"),
    )
    op.create_index("ix_model_versions_model_pk", "model_versions", ["model_pk"])
    op.create_table(
        "version_aliases",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_pk", sa.Integer, sa.ForeignKey("models.pk", ondelete="CASCADE"), nullable=False),
        sa.Column(
            "version_pk", sa.Integer, sa.ForeignKey("model_versions.pk", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("alias", sa.String(128), nullable=False),
        sa.UniqueConstraint("model_pk", "alias"),
    )
    op.create_index("ix_version_aliases_model_pk", "version_aliases", ["model_pk"])
    op.create_index("ix_version_aliases_version_pk", "version_aliases", ["version_pk"])
    op.create_table(
        "endpoints",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("location", sa.String(64), nullable=False),
        sa.Column("endpoint_id", sa.String(63), nullable=False),
        sa.Column("display_name", sa.String(1024), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("traffic_split", sa.JSON, nullable=False),
        sa.Column("logging_config", sa.JSON, nullable=False),
        sa.Column("extra", sa.JSON, nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("update_time", TS, nullable=False),
        sa.UniqueConstraint("project", "location", "endpoint_id"),
    )
    op.create_table(
        "deployed_models",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("deployed_model_id", sa.String(20), nullable=False, unique=True),
        sa.Column(
            "endpoint_pk", sa.Integer, sa.ForeignKey("endpoints.pk", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "model_version_pk",
            sa.Integer,
            sa.ForeignKey("model_versions.pk", ondelete="RESTRICT"),
            nullable=False,
        ),
        sa.Column("display_name", sa.String(1024), nullable=False),
        sa.Column("resources", sa.JSON, nullable=False),
        sa.Column("extra", sa.JSON, nullable=False),
        sa.Column("create_time", TS, nullable=False),
    )
    op.create_index("ix_deployed_models_endpoint_pk", "deployed_models", ["endpoint_pk"])
    op.create_index("ix_deployed_models_model_version_pk", "deployed_models", ["model_version_pk"])
    op.create_table(
        "operations",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(512), nullable=False, unique=True),
        sa.Column("done", sa.Boolean, nullable=False),
        sa.Column("metadata_json", sa.JSON, nullable=False),
        sa.Column("response", sa.JSON, nullable=True),
        sa.Column("error", sa.JSON, nullable=True),
        sa.Column("create_time", TS, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "operations",
        "deployed_models",
        "endpoints",
        "version_aliases",
        "model_versions",
        "models",
    ):
        op.drop_table(table)
