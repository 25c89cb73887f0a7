"""GPU spend: approvals and their votes, the spend ledger, channel budgets, refreshed prices;
and when a job's wall-clock warning went out.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"

TS = sa.DateTime(timezone=True)
# Decimals (USD, hours) are text: exact, and of any length (PostgreSQL enforces VARCHAR(n)).

# BIGSERIAL on PostgreSQL; INTEGER (64-bit, the rowid) on SQLite.
_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("requester", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(64)),
        sa.Column("estimate", sa.Text, nullable=False),
        sa.Column("formula", sa.Text, nullable=False),
        sa.Column("reasons", sa.JSON, nullable=False),
        sa.Column("required", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("decided_at", TS),
        sa.Column("extra_hours", sa.Text),
        sa.Column("month_spend", sa.Text),
        sa.Column("budget", sa.Text),
    )
    op.create_index("ix_approvals_state", "approvals", ["state", "expires_at"])
    op.create_table(
        "approval_votes",
        sa.Column("approval_id", sa.String(32), primary_key=True),
        sa.Column("approver", sa.String(64), primary_key=True),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("reason", sa.Text),
    )
    op.create_table(
        "ledger",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("user", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(64)),
        sa.Column("cluster", sa.String(64), nullable=False),
        sa.Column("vm_size", sa.String(64), nullable=False),
        sa.Column("nodes", sa.Integer, nullable=False),
        sa.Column("hours", sa.Text, nullable=False),
        sa.Column("usd", sa.Text, nullable=False),
    )
    op.create_index("ix_ledger_at", "ledger", ["at"])
    op.create_table(
        "budgets",
        sa.Column("channel", sa.String(64), primary_key=True),
        sa.Column("monthly_usd", sa.Text, nullable=False),
        sa.Column("set_by", sa.String(64), nullable=False),
        sa.Column("set_at", TS, nullable=False),
    )
    op.create_table(
        "prices",
        sa.Column("sku", sa.String(64), primary_key=True),
        sa.Column("region", sa.String(32), primary_key=True),
        sa.Column("spot", sa.Boolean, primary_key=True),
        sa.Column("usd_per_hour", sa.Text, nullable=False),
        sa.Column("fetched_at", TS, nullable=False),
        sa.Column("source", sa.String(256), nullable=False),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("wall_clock_warned_at", TS))
        batch.add_column(sa.Column("estimate", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("estimate")
        batch.drop_column("wall_clock_warned_at")
    for table in ("prices", "budgets", "ledger", "approval_votes", "approvals"):
        op.drop_table(table)
