"""File servers: `az batchai file-server create` NFS servers, which clusters and jobs mount.

Revision ID: 0008_mounts
Revises: 0007_workspace
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_mounts"
down_revision = "0007_workspace"


def upgrade() -> None:
    op.create_table(
        "file_servers",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("resource_group", sa.String(90), nullable=False),
        sa.Column("workspace", sa.String(64), nullable=False),
        sa.Column("vm_size", sa.String(64), nullable=False),
        sa.Column("disk_count", sa.Integer, nullable=False),
        sa.Column("disk_size_gb", sa.Integer, nullable=False),
        sa.Column("storage_sku", sa.String(16), nullable=False),
        sa.Column("admin_user", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(64)),
        sa.Column("created_at", sa.DateTime(timezone=True)),
        sa.Column("address", sa.Text),
        sa.Column("export", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("file_servers")
