"""agent_experiments: which experiments each agent may take, one row each, so an experiment's
agents are found by an index rather than by reading every agent's JSON list

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "agent_experiments",
        sa.Column("agent_id", sa.String(64), sa.ForeignKey("agents.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("experiment_id", sa.String(64), primary_key=True),
    )
    op.create_index("ix_agent_experiments_experiment", "agent_experiments", ["experiment_id"])
    conn = op.get_bind()
    agents = sa.table("agents", sa.column("id"), sa.column("experiments", sa.JSON))
    rows = [{"agent_id": a, "experiment_id": e}
            for a, exps in conn.execute(sa.select(agents.c.id, agents.c.experiments))
            for e in dict.fromkeys(exps or ())]
    if rows:
        op.bulk_insert(table, rows)


def downgrade() -> None:
    op.drop_table("agent_experiments")
