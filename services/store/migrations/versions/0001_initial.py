"""Initial tables: clusters, jobs, log offsets, metrics, events.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

TS = sa.DateTime(timezone=True)

# BIGSERIAL on PostgreSQL; INTEGER (64-bit, the rowid) on SQLite.
_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "clusters",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("resource_group", sa.String(90), nullable=False),
        sa.Column("workspace", sa.String(64), nullable=False),
        sa.Column("vm_size", sa.String(64), nullable=False),
        # Text, not String(256): PostgreSQL enforces lengths, and image references run longer.
        sa.Column("image", sa.Text, nullable=False),
        sa.Column("vm_priority", sa.String(16), nullable=False),
        sa.Column("min_nodes", sa.Integer, nullable=False),
        sa.Column("max_nodes", sa.Integer, nullable=False),
        sa.Column("target_nodes", sa.Integer, nullable=False),
        sa.Column("autoscale", sa.Boolean, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("mounts", sa.JSON, nullable=False),
        sa.Column("admin_user", sa.String(64)),
        sa.Column("setup_task", sa.Text),
        sa.Column("created_by", sa.String(64)),
        sa.Column("created_at", TS),
        sa.Column("conversation", sa.JSON),
        sa.Column("error", sa.Text),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("cluster", sa.String(64), nullable=False),
        sa.Column("resource_group", sa.String(90), nullable=False),
        sa.Column("workspace", sa.String(64), nullable=False),
        sa.Column("experiment", sa.String(64), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("spec_json", sa.Text, nullable=False),
        sa.Column("node_count", sa.Integer, nullable=False),
        sa.Column("toolkit", sa.String(16), nullable=False),
        sa.Column("max_wall_clock_s", sa.Integer, nullable=False),
        sa.Column("requester", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("queued_at", TS),
        sa.Column("started_at", TS),
        sa.Column("ended_at", TS),
        sa.Column("exit_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("nodes", sa.JSON, nullable=False),
        sa.Column("layout", sa.JSON),
        sa.Column("progress", sa.JSON),
        sa.Column("last_metrics", sa.JSON, nullable=False),
        sa.Column("container_image", sa.Text),
        sa.Column("conversation", sa.JSON),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index(
        "ix_jobs_live_name",
        "jobs",
        ["name"],
        unique=True,
        sqlite_where=sa.text("deleted = 0"),
        postgresql_where=sa.text("deleted = false"),
    )
    op.create_index("ix_jobs_cluster_state", "jobs", ["cluster", "state"])
    op.create_table(
        "log_offsets",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("file", sa.String(255), primary_key=True),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("lines", sa.Integer, nullable=False),
    )
    op.create_table(
        "metrics",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("step", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32)),
        sa.Column("cluster", sa.String(64)),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("delivered_at", TS),
    )
    op.create_index("ix_events_pending", "events", ["delivered_at", "id"])


def downgrade() -> None:
    for table in ("events", "metrics", "log_offsets", "jobs", "clusters"):
        op.drop_table(table)
