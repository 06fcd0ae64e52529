"""bundle usage: what each instance of a bundle used (wall, CPU, peak memory, queue wait), as
its worker measured it, with the event that ends it; the experiment's flow copies it onto the
task (one line, Usage.to_line())

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bundle_events") as batch:
        batch.add_column(sa.Column("usage", sa.String(200)))


def downgrade() -> None:
    with op.batch_alter_table("bundle_events") as batch:
        batch.drop_column("usage")
