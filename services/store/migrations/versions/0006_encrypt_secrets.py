"""Secrets at rest: the table that recognises the sealing key. The store seals the rows an
older version left in plain text at the first start after this revision, in the same
transaction (the key lives outside the database, so Alembic does not see it).

Revision ID: 0006_encrypt_secrets
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_encrypt_secrets"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "secrets_check",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("secrets_check")
