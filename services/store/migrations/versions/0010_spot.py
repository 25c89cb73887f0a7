"""Spot jobs that survive eviction: a job's lost-node retries and its earlier attempts.

Revision ID: 0010_spot
Revises: 0009_health
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_spot"
down_revision = "0009_health"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("max_retries", sa.Integer))  # NULL: no retries (older jobs)
        batch.add_column(sa.Column("attempts", sa.JSON))  # NULL: no earlier attempt


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("attempts")
        batch.drop_column("max_retries")
