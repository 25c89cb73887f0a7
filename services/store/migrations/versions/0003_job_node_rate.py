"""The USD rate per node-hour a job was priced at when it was submitted.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("node_rate", sa.Text))  # a Decimal as text


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("node_rate")
