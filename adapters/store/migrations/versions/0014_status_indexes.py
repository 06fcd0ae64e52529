"""status indexes: experiments by status, bundles by status and resource, so what /metrics
counts at every scrape is read from an index, never from rows holding a spec's YAML, a plan or
a bundle's instance list

Revision ID: 0014
Revises: 0013
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_experiments_status", "experiments", ["status"])
    op.create_index("ix_bundles_status", "bundles", ["status", "resource"])


def downgrade() -> None:
    op.drop_index("ix_bundles_status", "bundles")
    op.drop_index("ix_experiments_status", "experiments")
