"""Operations: user schedules (`job create --at/--cron`) and each cluster's idle scale-down state.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(8), nullable=False),  # at | cron
        sa.Column("expression", sa.String(128), nullable=False),  # as the user typed it
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),  # the job create request to replay
        sa.Column("requester", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(64)),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("next_run_at", TS),  # None once an `at` schedule has fired
        sa.Column("last_run_at", TS),
        sa.Column("last_job_id", sa.String(32)),
        sa.Column("last_job_name", sa.String(64)),
        sa.Column("last_error", sa.Text),
        sa.Column("runs", sa.Integer, nullable=False, server_default="0"),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    )
    op.create_index("ix_schedules_active", "schedules", ["active", "next_run_at"])
    with op.batch_alter_table("clusters") as batch:
        batch.add_column(sa.Column("idle_timeout_s", sa.Integer))  # None: the default
        batch.add_column(sa.Column("idle_since", TS))
        batch.add_column(sa.Column("idle_warned_at", TS))
        batch.add_column(sa.Column("idle_keep_until", TS))
        batch.add_column(sa.Column("idle_warning", sa.JSON))  # conversation of the warning message


def downgrade() -> None:
    with op.batch_alter_table("clusters") as batch:
        for column in ("idle_warning", "idle_keep_until", "idle_warned_at", "idle_since"):
            batch.drop_column(column)
        batch.drop_column("idle_timeout_s")
    op.drop_index("ix_schedules_active", table_name="schedules")
    op.drop_table("schedules")
