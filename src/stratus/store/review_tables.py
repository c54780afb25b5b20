"""Tables for content logging and key suspension (audit/content_log.py, audit/suspension.py;
migration 0005 creates them).

content_logging  one row per team whose prompts and completions are logged (no row: off, the
                 default); who enabled it and when
audit_content    the logged text of one audited request: redacted before it is stored, then
                 AES-GCM encrypted under the master key (security/secrets.py); `seq` is the
                 request's audit record, so the text is found from the chain and back
key_suspensions  API keys suspended after an anomaly alert, until an admin reinstates them
"""

from __future__ import annotations

import sqlalchemy as sa

from stratus.store.tables import metadata

content_logging = sa.Table(
    "content_logging",
    metadata,
    sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("enabled_at", sa.Float, nullable=False),
    sa.Column("enabled_by", sa.String(160), nullable=True),
)

audit_content = sa.Table(
    "audit_content",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("seq", sa.Integer, nullable=False),  # the audit record's place in the chain
    sa.Column("request_id", sa.String(64), nullable=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("team", sa.String(64), nullable=True),
    sa.Column("principal", sa.String(160), nullable=True),
    sa.Column("ciphertext", sa.Text, nullable=False),  # v1:<key id>:<base64>, see secrets.py
    sa.Column("key_id", sa.String(16), nullable=False),
    sa.Index("ix_audit_content_seq", "seq"),
    sa.Index("ix_audit_content_request_id", "request_id"),
)


def content_aad(seq: int) -> str:
    """The associated data that binds an audit_content ciphertext to its audit record."""
    return f"audit_content/{seq}"


key_suspensions = sa.Table(
    "key_suspensions",
    metadata,
    sa.Column("key_id", sa.String(32), sa.ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("reason", sa.String(64), nullable=False),  # the alert: rate_spike, new_model, ...
    sa.Column("detail", sa.Text, nullable=True),  # the alert's facts, as JSON
    sa.Column("suspended_at", sa.Float, nullable=False),
)
