"""experiments run by Prefect deployments: paused, resumes, submitted_by_flow_run; service
accounts of deployments

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UtcDateTime = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("paused", sa.Boolean, nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("resumes", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("origin_flow_run_id", sa.String(36)))
        batch.create_index("ix_experiments_origin", ["origin_flow_run_id"], unique=True)
    op.create_table(
        "service_accounts",
        sa.Column("deployment_id", sa.String(36), primary_key=True),
        sa.Column("deployment", sa.String(400), nullable=False),
        sa.Column("account", sa.String(200), nullable=False, unique=True),
        sa.Column("project", sa.String(200), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("service_accounts")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_index("ix_experiments_origin")
        batch.drop_column("origin_flow_run_id")
        batch.drop_column("resumes")
        batch.drop_column("paused")
