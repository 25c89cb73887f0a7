"""Node health and GPU use: the nodes of a cluster that failed their health check (announced
once) and a job's GPU use (the card, the idle-GPU warning, the receipt's average).

Revision ID: 0009_health
Revises: 0008_mounts
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_health"
down_revision = "0008_mounts"


def upgrade() -> None:
    with op.batch_alter_table("clusters") as batch:
        batch.add_column(sa.Column("unusable_nodes", sa.JSON))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("gpu", sa.JSON))
        batch.add_column(sa.Column("gpu_warning_id", sa.String(32)))
        batch.add_column(sa.Column("gpu_warned_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("gpu_warning_closed", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for column in ("gpu_warning_closed", "gpu_warned_at", "gpu_warning_id", "gpu"):
            batch.drop_column(column)
    with op.batch_alter_table("clusters") as batch:
        batch.drop_column("unusable_nodes")
