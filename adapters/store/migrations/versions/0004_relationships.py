"""relationships: the permission graph, so an embedded SpiceDB can be rebuilt in every process

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "relationships",
        sa.Column("object_type", sa.String(64), primary_key=True),
        sa.Column("object_id", sa.String(200), primary_key=True),
        sa.Column("relation", sa.String(64), primary_key=True),
        sa.Column("subject_type", sa.String(64), primary_key=True),
        sa.Column("subject_id", sa.String(200), primary_key=True),
        sa.Column("subject_relation", sa.String(64), primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("relationships")
