"""Secrets at rest: names and AES-GCM ciphertexts (upstream API keys, webhook secrets).

Revision ID: 0004_secrets
Revises: 0003_usage_limits
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_secrets"
down_revision = "0003_usage_limits"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stored_secrets",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("ciphertext", sa.Text, nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_stored_secrets"),
    )


def downgrade() -> None:
    op.drop_table("stored_secrets")
