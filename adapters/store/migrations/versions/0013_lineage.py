"""lineage: one row per declared output of a completed instance, and what it came from

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "output_lineage",
        sa.Column("output_id", sa.String(16), primary_key=True),
        sa.Column("experiment_id", sa.String(36),
                  sa.ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False),
        sa.Column("instance_id", sa.String(300), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("script_sha256", sa.String(64), nullable=False),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("resource", sa.String(200), nullable=False),
        sa.Column("upstream", sa.JSON, nullable=False),
        sa.Column("mounts", sa.JSON, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_output_lineage_path", "output_lineage", ["experiment_id", "path"],
                    unique=True)


def downgrade() -> None:
    op.drop_index("ix_output_lineage_path", table_name="output_lineage")
    op.drop_table("output_lineage")
