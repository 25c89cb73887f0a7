"""Workspaces and experiments (2018-05-01 on) as stored resources. The workspaces and
experiments the clusters and jobs of an older version already name are recorded too, so
`workspace list` shows every one in use.

Revision ID: 0007_workspace
Revises: 0006_encrypt_secrets
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_workspace"
down_revision = "0006_encrypt_secrets"

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "workspaces",
        sa.Column("resource_group", sa.String(90), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("location", sa.String(40)),
        sa.Column("created_by", sa.String(64)),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "experiments",
        sa.Column("resource_group", sa.String(90), primary_key=True),
        sa.Column("workspace", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("created_by", sa.String(64)),
        sa.Column("created_at", TS, nullable=False),
    )
    # A cluster row may lack created_at (it was nullable): then the workspace dates from now.
    op.execute(
        "INSERT INTO workspaces (resource_group, name, created_at) "
        "SELECT resource_group, workspace, MIN(created_at) FROM ("
        " SELECT resource_group, workspace, created_at FROM jobs"
        " UNION ALL SELECT resource_group, workspace, COALESCE(created_at, CURRENT_TIMESTAMP)"
        " FROM clusters) used GROUP BY resource_group, workspace"
    )
    op.execute(
        "INSERT INTO experiments (resource_group, workspace, name, created_at) "
        "SELECT resource_group, workspace, experiment, MIN(created_at) FROM jobs "
        "GROUP BY resource_group, workspace, experiment"
    )


def downgrade() -> None:
    op.drop_table("experiments")
    op.drop_table("workspaces")
