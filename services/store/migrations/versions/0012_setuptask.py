"""Cluster setup tasks: their log prefix and suffix, variables and (sealed) secrets.

Revision ID: 0012_setuptask
Revises: 0011_sweep
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_setuptask"
down_revision = "0011_sweep"


def upgrade() -> None:
    with op.batch_alter_table("clusters") as batch:
        batch.add_column(sa.Column("setup_task_spec", sa.JSON))  # NULL: no setup task


def downgrade() -> None:
    with op.batch_alter_table("clusters") as batch:
        batch.drop_column("setup_task_spec")
