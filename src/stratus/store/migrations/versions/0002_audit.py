"""Audit trail: hash-chained, HMAC'd audit events and the chain head.

Revision ID: 0002_audit
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_audit"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("principal", sa.String(160), nullable=True),
        sa.Column("team", sa.String(64), nullable=True),
        sa.Column("key_prefix", sa.String(64), nullable=True),
        sa.Column("action", sa.String(160), nullable=False),
        sa.Column("resource", sa.String(512), nullable=True),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("status", sa.Integer, nullable=True),
        sa.Column("prompt_tokens", sa.Integer, nullable=True),
        sa.Column("completion_tokens", sa.Integer, nullable=True),
        sa.Column("client", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(256), nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("prev_mac", sa.String(64), nullable=False),
        sa.Column("mac", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_seq", "audit_events", ["seq"])
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("mac", sa.String(64), nullable=False),
        sa.Column("sig", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_head"),
    )


def downgrade() -> None:
    op.drop_table("audit_head")
    op.drop_index("ix_audit_events_at", table_name="audit_events")
    op.drop_index("ix_audit_events_seq", table_name="audit_events")
    op.drop_table("audit_events")
