"""usage: what each task instance's last attempt used (wall, CPU, peak memory, queue wait), its
step's script hash (placement reads earlier runtimes of the same script), and the instance
duration histogram's bucket counts per resource, kept as instances end (never recounted)

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("wall_seconds", sa.Float))
        batch.add_column(sa.Column("cpu_seconds", sa.Float))
        batch.add_column(sa.Column("max_rss_bytes", sa.BigInteger))
        batch.add_column(sa.Column("queue_seconds", sa.Float))
        batch.add_column(sa.Column("script_hash", sa.String(64)))
    op.create_index("ix_tasks_history", "tasks", ["script_hash", "state", "finished_at"])
    op.create_table(
        "instance_durations",
        sa.Column("resource", sa.String(200), primary_key=True),
        sa.Column("bucket", sa.Integer, primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("seconds", sa.Float, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("instance_durations")
    op.drop_index("ix_tasks_history", "tasks")
    with op.batch_alter_table("tasks") as batch:
        for column in ("script_hash", "queue_seconds", "max_rss_bytes", "cpu_seconds",
                       "wall_seconds"):
            batch.drop_column(column)
