"""The audit trail's tables (audit/log.py writes them; migration 0002 creates them).

audit_events  one row per audited request or admin action, in append order (`id`); `seq` is the
              record's place in the hash chain, `prev_mac` the MAC of the record before it and
              `mac` an HMAC-SHA256 over the record's canonical form under a key the database
              does not hold
audit_head    a single row (id 1): the newest seq and mac, with its own HMAC. Writers update it
              first, which serialises appends on SQLite and PostgreSQL alike, and `stratus audit
              verify` compares it with the last record to notice a truncated tail
"""

from __future__ import annotations

import sqlalchemy as sa

from stratus.store.tables import metadata

audit_events = sa.Table(
    "audit_events",
    metadata,
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
    sa.Column("detail", sa.Text, nullable=True),  # canonical JSON; never secrets or prompts
    sa.Column("prev_mac", sa.String(64), nullable=False),
    sa.Column("mac", sa.String(64), nullable=False),
    sa.Index("ix_audit_events_seq", "seq"),
    sa.Index("ix_audit_events_at", "at"),
)

audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("mac", sa.String(64), nullable=False),
    sa.Column("sig", sa.String(64), nullable=False),
)
