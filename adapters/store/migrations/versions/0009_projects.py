"""projects: a project's own row (its description, who made it, when), so that projects are
listed from our store whichever SpiceDB holds their memberships; the projects an existing
store knew only through the permission journal are recorded as they are

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UtcDateTime = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("description", sa.Text),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
    )
    op.execute(
        "INSERT INTO projects (name, description, created_by, created_at) "
        "SELECT DISTINCT object_id, NULL, '(before 0009)', CURRENT_TIMESTAMP "
        "FROM relationships WHERE object_type = 'project'")


def downgrade() -> None:
    op.drop_table("projects")
