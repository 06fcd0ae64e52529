"""bundles and bundle_events: what work pools run, and what their workers saw; experiment owner

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UtcDateTime = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("owner", sa.String(200)))
        batch.add_column(sa.Column("project", sa.String(200)))
    op.create_table(
        "bundles",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("experiment_id", sa.String(36),
                  sa.ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False),
        sa.Column("resource", sa.String(200), nullable=False),
        sa.Column("step", sa.String(200), nullable=False),
        sa.Column("instances", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("flow_run_id", sa.String(36)),
        sa.Column("infrastructure", sa.JSON),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("message", sa.Text),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("heartbeat_at", UtcDateTime),
        sa.Column("finished_at", UtcDateTime),
    )
    op.create_index("ix_bundles_experiment", "bundles", ["experiment_id", "status"])
    op.create_table(
        "bundle_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("experiment_id", sa.String(36),
                  sa.ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False),
        sa.Column("bundle_id", sa.String(36), sa.ForeignKey("bundles.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer),
        sa.Column("message", sa.Text),
        sa.Column("at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_bundle_events_experiment", "bundle_events", ["experiment_id", "id"])


def downgrade() -> None:
    op.drop_table("bundle_events")
    op.drop_table("bundles")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("project")
        batch.drop_column("owner")
