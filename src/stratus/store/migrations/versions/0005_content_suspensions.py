"""Content logging per team (encrypted, redacted text of audited requests) and key suspensions.

Revision ID: 0005_content_suspensions
Revises: 0004_secrets
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_content_suspensions"
down_revision = "0004_secrets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "content_logging",
        sa.Column("team_id", sa.Integer, nullable=False),
        sa.Column("enabled_at", sa.Float, nullable=False),
        sa.Column("enabled_by", sa.String(160), nullable=True),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name="fk_content_logging_team_id_teams", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("team_id", name="pk_content_logging"),
    )
    op.create_table(
        "audit_content",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("team", sa.String(64), nullable=True),
        sa.Column("principal", sa.String(160), nullable=True),
        sa.Column("ciphertext", sa.Text, nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_content"),
    )
    op.create_index("ix_audit_content_seq", "audit_content", ["seq"])
    op.create_index("ix_audit_content_request_id", "audit_content", ["request_id"])
    op.create_table(
        "key_suspensions",
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("suspended_at", sa.Float, nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name="fk_key_suspensions_key_id_api_keys", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("key_id", name="pk_key_suspensions"),
    )


def downgrade() -> None:
    op.drop_table("key_suspensions")
    op.drop_index("ix_audit_content_request_id", "audit_content")
    op.drop_index("ix_audit_content_seq", "audit_content")
    op.drop_table("audit_content")
    op.drop_table("content_logging")
