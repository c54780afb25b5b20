"""The audit trail's tables (audit/log.py writes them; migration 0002 creates them).

audit_events  one row per audited request or admin action, in append order (`id`); `seq` is the
              record's place in the hash chain, `prev_mac` the MAC of the record before it and
              `mac` an HMAC-SHA256 over the record's canonical form under a key the database
              does not hold
audit_head    a single row (id 1): the newest seq and mac, with its own HMAC. Writers update it
              first, which serialises appends on SQLite and PostgreSQL alike, and `stratus audit
              verify` compares it with the last record to notice a truncated tail

The append (audit/log.py) runs `append_sql`'s statements on a raw driver connection, for speed;
the reads below go through SQLAlchemy like the rest of store.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from stratus.store.review_tables import audit_content
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


# -- the append's statements ------------------------------------------------------------------------


class AppendSQL(NamedTuple):
    lock_head: str
    genesis: str
    insert_event: str
    insert_content: str
    move_head: str


@functools.cache
def append_sql(
    paramstyle: str, event_columns: tuple[str, ...], content_columns: tuple[str, ...]
) -> AppendSQL:
    """The append's statements as driver SQL, built once per paramstyle and column order (the
    order of the caller's row tuples). The append runs them on the driver's cursor, inside one
    transaction: SQLAlchemy's per-statement work (compiling, binding, result set-up) cost more CPU
    than SQLite's own insert and commit. Column names must be the tables' own (checked here)."""
    for table, columns in ((audit_events, event_columns), (audit_content, content_columns)):
        unknown = set(columns) - set(table.c.keys())
        if unknown:
            raise ValueError(f"{table.name} has no column {sorted(unknown)}")
    mark = "?" if paramstyle == "qmark" else "%s"  # sqlite3: qmark; psycopg: format/pyformat

    def insert(table: str, columns: tuple[str, ...]) -> str:
        return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"

    return AppendSQL(
        # A no-op update that takes the write lock and returns the head it locked.
        lock_head="UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, mac",
        genesis=f"INSERT INTO audit_head (id, seq, mac, sig) VALUES (1, 0, {mark}, {mark}) "
        "ON CONFLICT DO NOTHING",  # SQLite 3.24+ and PostgreSQL 9.5+
        insert_event=insert("audit_events", event_columns),
        insert_content=insert("audit_content", content_columns),
        move_head=f"UPDATE audit_head SET seq = {mark}, mac = {mark}, sig = {mark} WHERE id = 1",
    )


# -- reads --------------------------------------------------------------------------------------------


def read_head(conn: Connection) -> tuple[int, str, str] | None:
    """The head row's (seq, mac, sig); None before the first record."""
    row = conn.execute(sa.select(audit_head).where(audit_head.c.id == 1)).first()
    return (row.seq, row.mac, row.sig) if row else None


def events_after(conn: Connection, last_id: int, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` records with id > last_id, in id (append) order, each as a dict of columns."""
    rows = conn.execute(
        sa.select(audit_events).where(audit_events.c.id > last_id).order_by(audit_events.c.id).limit(limit)
    ).all()
    return [row._asdict() for row in rows]


def find_events(
    conn: Connection,
    *,
    principal: str | None = None,
    action: str | None = None,
    model: str | None = None,
    outcome: str | None = None,
    since: float | None = None,
    until: float | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """Records newest first, filtered (each given filter must match); `before_id` pages back."""
    c = audit_events.c
    query = sa.select(audit_events).order_by(c.id.desc()).limit(limit)
    for column, value in (
        (c.principal, principal),
        (c.action, action),
        (c.model, model),
        (c.outcome, outcome),
    ):
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(c.at >= since)
    if until is not None:
        query = query.where(c.at < until)
    if before_id is not None:
        query = query.where(c.id < before_id)
    return [row._asdict() for row in conn.execute(query)]
