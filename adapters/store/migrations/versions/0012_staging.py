"""staging: per-resource cache totals, and the files each step's storage mounts held

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "staging_totals",
        sa.Column("resource", sa.String(200), primary_key=True),
        sa.Column("hits", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("misses", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes_moved", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes_saved", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("retries", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "staged_files",
        sa.Column("experiment_id", sa.String(36),
                  sa.ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("step", sa.String(200), primary_key=True),
        sa.Column("mount", sa.Text, primary_key=True),
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("staged_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("staged_files")
    op.drop_table("staging_totals")
