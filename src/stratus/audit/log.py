"""The audit trail: append-only, hash-chained records, each with an HMAC under a server key.

    log = AuditLog(store, key)
    log.append(AuditEvent(action="POST /v1/chat/completions", outcome="ok", status=200, ...))

Each record's MAC covers its canonical form (every field, its `seq` and the MAC of the record
before it), so changing, removing, adding or moving a record breaks the chain at that point
(audit/verify.py finds where). The head row is updated first in every append: that
serialises writers (SQLite's write lock, a PostgreSQL row lock) and marks how long the chain is.

A record holds who, what, on which model, the outcome, token counts and where from: never a
secret and never prompt or completion text (`detail` takes small structured facts only). For a
team with content logging on (audit/content_log.py) the redacted text goes, encrypted, into
`audit_content` in the same transaction, bound to the record's seq.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import operator
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple

import orjson
import sqlalchemy as sa

from stratus.security.secrets import Keyring, encrypt
from stratus.store import Conflict, Store, StoreError, StoreUnavailable, redact_url
from stratus.store.audit_tables import audit_events, audit_head
from stratus.store.review_tables import content_aad

GENESIS = "0" * 64


@dataclass
class AuditEvent:
    action: str  # "POST /v1/chat/completions", "auth.lockout", "alert.rate_spike", ...
    outcome: str  # ok | error | denied | client_disconnect | locked | alert
    at: float = field(default_factory=time.time)
    request_id: str | None = None
    principal: str | None = None
    team: str | None = None
    key_prefix: str | None = None
    resource: str | None = None
    model: str | None = None
    status: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    client: str | None = None
    user_agent: str | None = None
    detail: str | None = None  # canonical JSON


EVENT_FIELDS = tuple(f.name for f in fields(AuditEvent))
_event_values = operator.attrgetter(*EVENT_FIELDS)  # one C call for every field, in order


@dataclass
class AuditRecord(AuditEvent):
    seq: int = 0
    prev_mac: str = GENESIS
    mac: str = ""
    id: int | None = None

    def to_json(self) -> dict:
        return asdict(self)


def canonical(values: dict, seq: int, prev_mac: str) -> bytes:
    body = {name: values.get(name) for name in EVENT_FIELDS}
    body["at"] = repr(float(body["at"]))  # exact float text on every backend
    body["seq"] = seq
    body["prev_mac"] = prev_mac
    # orjson is ~10x faster than json.dumps and writes the same bytes whenever nothing needs
    # escaping (ASCII, no quotes, backslashes or control characters: then no backslash comes
    # out). Anything else takes the original encoder, so every stored MAC stays verifiable.
    try:
        fast = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # a lone surrogate, an integer past 64 bits
        fast = b"\\"
    if fast.isascii() and b"\\" not in fast:
        return fast
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def record_mac(key: bytes, values: dict, seq: int, prev_mac: str) -> str:
    return hmac.new(key, canonical(values, seq, prev_mac), hashlib.sha256).hexdigest()


def head_sig(key: bytes, seq: int, mac: str) -> str:
    return hmac.new(key, f"head|{seq}|{mac}".encode(), hashlib.sha256).hexdigest()


class _SQL(NamedTuple):
    lock_head: str
    genesis: str
    insert_event: str
    insert_content: str
    move_head: str


_EVENT_COLUMNS = ("seq", *EVENT_FIELDS, "prev_mac", "mac")
_CONTENT_COLUMNS = ("seq", "request_id", "at", "team", "principal", "ciphertext", "key_id")


@functools.cache
def _sql(paramstyle: str) -> _SQL:
    """The append's statements as driver SQL, built once per paramstyle. The append runs them on
    the driver's cursor, inside the Store's transaction: SQLAlchemy's per-statement work
    (compiling, binding, result set-up) cost more CPU than SQLite's own insert and commit."""
    mark = "?" if paramstyle == "qmark" else "%s"  # sqlite3: qmark; psycopg: format/pyformat

    def insert(table: str, columns: tuple[str, ...]) -> str:
        return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"

    return _SQL(
        # A no-op update that takes the write lock and returns the head it locked.
        lock_head="UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, mac",
        genesis=f"INSERT INTO audit_head (id, seq, mac, sig) VALUES (1, 0, {mark}, {mark}) "
        "ON CONFLICT DO NOTHING",  # SQLite 3.24+ and PostgreSQL 9.5+
        insert_event=insert("audit_events", _EVENT_COLUMNS),
        insert_content=insert("audit_content", _CONTENT_COLUMNS),
        move_head=f"UPDATE audit_head SET seq = {mark}, mac = {mark}, sig = {mark} WHERE id = 1",
    )


def detail(**facts) -> str:
    return json.dumps(facts, sort_keys=True, separators=(",", ":"))


class AuditLog:
    """Appends records to, and reads them from, one store."""

    def __init__(self, store: Store, key: bytes):
        self.store = store
        self.key = key
        self._lock = threading.Lock()  # one writer per process; the head row orders processes
        self._conn = None  # see _connection()
        self._engine = None  # the engine self._conn came from
        dialect = store.engine.dialect
        self._dbapi = dialect.loaded_dbapi
        self._sql = _sql(dialect.paramstyle)

    def append(self, event: AuditEvent) -> AuditRecord:
        return self.append_many([event])[0]

    def append_many(
        self,
        events: list[AuditEvent],
        contents: list[str | None] | None = None,
        ring: Keyring | None = None,
    ) -> list[AuditRecord]:
        """Append in one transaction (one fsync): all of them are stored, or none. `contents[i]`,
        when given, is event i's redacted text, stored encrypted under `ring` beside it."""
        with self._lock:
            conn = None
            try:
                conn = self._connection()
                try:
                    head = self._lock_head(conn)
                except self._dbapi.Error as exc:
                    lost = (self._dbapi.OperationalError, self._dbapi.InterfaceError)
                    if not isinstance(exc, lost) or self._engine.dialect.name == "sqlite":
                        raise  # SQLite has no server to drop it: "locked" already waited its timeout
                    # Nothing was written yet: a connection the server dropped while it sat idle
                    # gets one fresh try (as the pool's pre-ping would have given it).
                    self._drop(conn)
                    conn = None
                    conn = self._connection()
                    head = self._lock_head(conn)
                out = self._append(conn, head, events, contents, ring)
                conn.commit()
                return out
            except BaseException as exc:
                if conn is not None:
                    self._drop(conn)  # rolls back; the next append starts on a fresh connection
                mapped = _store_error(self.store, self._dbapi, exc)
                if mapped is None:
                    raise
                raise mapped from exc

    def _append(self, conn, head: tuple[int, str], events, contents, ring) -> list[AuditRecord]:
        seq, prev_mac = head
        sql = self._sql
        out, rows, texts = [], [], []
        for i, event in enumerate(events):
            row = _event_values(event)  # all scalars: no deepcopy
            values = dict(zip(EVENT_FIELDS, row, strict=True))
            seq += 1
            mac = record_mac(self.key, values, seq, prev_mac)
            rows.append((seq, *row, prev_mac, mac))
            out.append(AuditRecord(**values, seq=seq, prev_mac=prev_mac, mac=mac))
            prev_mac = mac
            if contents is not None and contents[i] is not None:
                texts.append(_content_row(ring, event, seq, contents[i]))
        cursor = conn.cursor()
        try:
            cursor.executemany(sql.insert_event, rows)
            if texts:
                cursor.executemany(sql.insert_content, texts)
            cursor.execute(sql.move_head, (seq, prev_mac, head_sig(self.key, seq, prev_mac)))
        finally:
            cursor.close()
        return out

    def _connection(self):
        """The writer's own pooled DB-API connection, kept between appends: checking one out
        and back in per append (SQLAlchemy's pool, reset and transaction bookkeeping) cost about
        as much CPU as the statements themselves. Only used under self._lock."""
        engine = self.store.engine
        if self._conn is not None and self._engine is not engine:  # the Store was re-pointed
            self._drop(self._conn)
        if self._conn is None:
            self._conn = engine.raw_connection()  # the Store's pragmas applied
            self._engine = engine
        return self._conn

    def _drop(self, conn) -> None:
        self._conn = None
        with contextlib.suppress(Exception):
            conn.invalidate()  # closes it (rolling back) and keeps it out of the pool

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()  # back to the pool, rolled back
                self._conn = None

    def _lock_head(self, conn) -> tuple[int, str]:
        # A no-op update takes the write lock as it reads the head (SQLite: the database lock;
        # PostgreSQL: the row lock), so two processes never extend the chain from one head.
        cursor = conn.cursor()
        try:
            cursor.execute(self._sql.lock_head)
            row = cursor.fetchone()
            if row is None:  # the first record ever: create the head, once
                cursor.execute(self._sql.genesis, (GENESIS, head_sig(self.key, 0, GENESIS)))
                cursor.execute(self._sql.lock_head)
                row = cursor.fetchone()
        finally:
            cursor.close()
        return row[0], row[1]

    def head(self) -> tuple[int, str, str] | None:
        with self.store.connect() as conn:
            row = conn.execute(sa.select(audit_head).where(audit_head.c.id == 1)).first()
        return (row.seq, row.mac, row.sig) if row else None

    def records(self, batch: int = 1000) -> Iterator[AuditRecord]:
        """Every stored record in append (id) order, read in batches."""
        last = 0
        while True:
            with self.store.connect() as conn:
                rows = conn.execute(
                    sa.select(audit_events)
                    .where(audit_events.c.id > last)
                    .order_by(audit_events.c.id)
                    .limit(batch)
                ).all()
            for row in rows:
                yield AuditRecord(**row._asdict())
            if len(rows) < batch:
                return
            last = rows[-1].id

    def query(
        self,
        *,
        principal: str | None = None,
        action: str | None = None,
        model: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[AuditRecord]:
        """Newest first, filtered; `before_id` pages back through older records."""
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
        with self.store.connect() as conn:
            return [AuditRecord(**row._asdict()) for row in conn.execute(query)]


def _content_row(ring: Keyring | None, event: AuditEvent, seq: int, text: str) -> tuple:
    if ring is None:
        raise ValueError("content to log but no master keyring to encrypt it with")
    token = encrypt(ring, content_aad(seq), text)
    # In _CONTENT_COLUMNS' order.
    return (seq, event.request_id, event.at, event.team, event.principal, token, ring.current)


def _store_error(store: Store, dbapi, exc: BaseException) -> Exception | None:
    """A driver error from the raw append as the Store's own exceptions name it (None: as is)."""
    if isinstance(exc, StoreError):
        return None
    # sa.exc.*: from the pool, opening a connection (SQLAlchemy has wrapped the driver's error)
    lost = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)
    if isinstance(exc, (*lost, dbapi.OperationalError, dbapi.InterfaceError)):
        return StoreUnavailable(f"database {redact_url(store.url)} unavailable: {type(exc).__name__}")
    if isinstance(exc, dbapi.IntegrityError):
        return Conflict("violates a rule of the database")
    return None
