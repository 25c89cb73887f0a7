"""Sweeps: a grid of jobs submitted as one (`job create --sweep`); each job names its sweep.

Revision ID: 0011_sweep
Revises: 0010_spot
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_sweep"
down_revision = "0010_spot"


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("requester", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("metric", sa.String(72)),
        sa.Column("channel", sa.String(64)),
        sa.Column("cluster", sa.String(64), nullable=False),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("sweep_id", sa.String(32)))
    op.create_index("ix_jobs_sweep", "jobs", ["sweep_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_sweep", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("sweep_id")
    op.drop_table("sweeps")
