"""Tables for content logging and key suspension (audit/content_log.py, audit/suspension.py;
migration 0005 creates them).

content_logging  one row per team whose prompts and completions are logged (no row: off, the
                 default); who enabled it and when
audit_content    the logged text of one audited request: redacted before it is stored, then
                 AES-GCM encrypted under the master key (security/secrets.py); `seq` is the
                 request's audit record, so the text is found from the chain and back
key_suspensions  API keys suspended after an anomaly alert, until an admin reinstates them

The functions below take a `Connection` from `Store.begin()` (writes) or `Store.connect()` (reads).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from stratus.store.tables import metadata, teams

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


# -- content logging ------------------------------------------------------------------------------


def content_logged_teams(conn: Connection) -> set[str]:
    """The names of the teams whose content is logged."""
    query = sa.select(teams.c.name).join(content_logging, content_logging.c.team_id == teams.c.id)
    return set(conn.execute(query).scalars())


def set_content_logging(conn: Connection, team_id: int, enabled: bool, by: str | None, now: float) -> None:
    """Content logging on (enabled by `by` at `now`) or off for a team."""
    conn.execute(content_logging.delete().where(content_logging.c.team_id == team_id))
    if enabled:
        conn.execute(content_logging.insert().values(team_id=team_id, enabled_at=now, enabled_by=by))


def content_logging_list(conn: Connection) -> list[dict[str, Any]]:
    """{"team", "enabled_at", "enabled_by"} of each team whose content is logged, by team name."""
    c = content_logging.c
    query = (
        sa.select(teams.c.name, c.enabled_at, c.enabled_by)
        .join(content_logging, c.team_id == teams.c.id)
        .order_by(teams.c.name)
    )
    return [
        {"team": r.name, "enabled_at": r.enabled_at, "enabled_by": r.enabled_by} for r in conn.execute(query)
    ]


def content_rows(
    conn: Connection, *, request_id: str | None = None, seq: int | None = None, limit: int = 100
) -> list[Row[Any]]:
    """audit_content rows newest first (still encrypted), filtered by request id and/or seq."""
    c = audit_content.c
    query = sa.select(audit_content).order_by(c.id.desc()).limit(limit)
    if request_id is not None:
        query = query.where(c.request_id == request_id)
    if seq is not None:
        query = query.where(c.seq == seq)
    return list(conn.execute(query).all())


def content_not_under(conn: Connection, key_id: str, after_id: int, limit: int) -> list[Row[Any]]:
    """Up to `limit` audit_content rows (id, seq, ciphertext, key_id) with id > after_id whose
    ciphertext is under a key other than `key_id`, in id order (a rotation's next batch)."""
    c = audit_content.c
    query = sa.select(c.id, c.seq, c.ciphertext, c.key_id).where(c.id > after_id, c.key_id != key_id)
    return list(conn.execute(query.order_by(c.id).limit(limit)).all())


def set_content_ciphertext(conn: Connection, row_id: int, ciphertext: str, key_id: str) -> None:
    conn.execute(
        audit_content.update()
        .where(audit_content.c.id == row_id)
        .values(ciphertext=ciphertext, key_id=key_id)
    )


# -- key suspensions ------------------------------------------------------------------------------


def suspended_key_ids(conn: Connection) -> set[str]:
    return set(conn.execute(sa.select(key_suspensions.c.key_id)).scalars())


def add_suspension(conn: Connection, key_id: str, reason: str, detail: str, at: float) -> bool:
    """Suspend a key unless it already is; True if this added the suspension."""
    c = key_suspensions.c
    if conn.execute(sa.select(c.key_id).where(c.key_id == key_id)).first() is not None:
        return False
    conn.execute(
        key_suspensions.insert().values(key_id=key_id, reason=reason, detail=detail, suspended_at=at)
    )
    return True


def lift_suspension(conn: Connection, key_id: str) -> bool:
    """True if the key was suspended (and now is not)."""
    return bool(conn.execute(key_suspensions.delete().where(key_suspensions.c.key_id == key_id)).rowcount)


def suspensions(conn: Connection) -> list[Row[Any]]:
    """Every key_suspensions row (key_id, reason, detail, suspended_at), newest first."""
    return list(
        conn.execute(sa.select(key_suspensions).order_by(key_suspensions.c.suspended_at.desc())).all()
    )
