"""OpenAI-compatible upstreams (their API keys are stored secrets, see 0004).

Revision ID: 0006_upstreams
Revises: 0005_content_suspensions
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_upstreams"
down_revision = "0005_content_suspensions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upstreams",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("base_url", sa.String(2048), nullable=False),
        sa.Column("upstream_model", sa.String(256), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(160), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_upstreams"),
    )
    op.create_index("ix_upstreams_model", "upstreams", ["model"])


def downgrade() -> None:
    op.drop_index("ix_upstreams_model", table_name="upstreams")
    op.drop_table("upstreams")
