"""pilots: work_items (one attempt of one instance, queued for pilot agents and leased by them),
pilot_events (what happened to each, for the experiment's flow) and agents

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UtcDateTime = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "work_items",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("experiment_id", sa.String(36),
                  sa.ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False),
        sa.Column("instance_id", sa.String(300), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("resource", sa.String(200), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
        sa.Column("agent_id", sa.String(64)),
        sa.Column("lease_expires_at", UtcDateTime),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("state", sa.String(16)),
        sa.Column("exit_code", sa.Integer),
        sa.Column("message", sa.Text),
        sa.Column("usage", sa.JSON),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("finished_at", UtcDateTime),
    )
    op.create_index("ix_work_items_attempt", "work_items",
                    ["experiment_id", "instance_id", "attempt"], unique=True)
    op.create_index("ix_work_items_claim", "work_items", ["status", "resource", "id"])
    op.create_index("ix_work_items_agent", "work_items", ["agent_id", "status"])
    op.create_table(
        "pilot_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("experiment_id", sa.String(36),
                  sa.ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("work_items.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("instance_id", sa.String(300), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16)),
        sa.Column("exit_code", sa.Integer),
        sa.Column("message", sa.Text),
        sa.Column("usage", sa.JSON),
        sa.Column("at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_pilot_events_experiment", "pilot_events", ["experiment_id", "id"])
    op.create_table(
        "agents",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("resource", sa.String(200), nullable=False),
        sa.Column("experiments", sa.JSON, nullable=False),
        sa.Column("hostname", sa.String(300), nullable=False),
        sa.Column("slots", sa.Integer, nullable=False),
        sa.Column("cores", sa.Integer, nullable=False, server_default="0"),
        sa.Column("memory_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("gpus", sa.Integer, nullable=False, server_default="0"),
        sa.Column("allocation_id", sa.String(200), nullable=False, server_default=""),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("registered_at", UtcDateTime, nullable=False),
        sa.Column("heartbeat_at", UtcDateTime),
        sa.Column("stopped_reason", sa.Text),
    )
    op.create_index("ix_agents_resource", "agents", ["resource", "status"])


def downgrade() -> None:
    op.drop_table("agents")
    op.drop_table("pilot_events")
    op.drop_table("work_items")
