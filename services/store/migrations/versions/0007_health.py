"""Node health and GPU use: the nodes of a cluster that failed their health check (announced
once) and a job's GPU use (the card, the idle-GPU warning, the receipt's average).

Revision ID: 0007_health
Revises: 0006_encrypt_secrets
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_health"
down_revision = "0006_encrypt_secrets"


def upgrade() -> None:
    with op.batch_alter_table("clusters") as batch:
        batch.add_column(sa.Column("unusable_nodes", sa.JSON))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("gpu", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("gpu")
    with op.batch_alter_table("clusters") as batch:
        batch.drop_column("unusable_nodes")
