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
import hashlib
import hmac
import json
import operator
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields

import orjson

from stratus.security.secrets import Keyring, encrypt
from stratus.store import Store, connection_lost, driver_error
from stratus.store.audit_tables import append_sql, events_after, find_events, read_head
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


# The order of the append's row tuples, and so of the columns its statements name.
_EVENT_COLUMNS = ("seq", *EVENT_FIELDS, "prev_mac", "mac")
_CONTENT_COLUMNS = ("seq", "request_id", "at", "team", "principal", "ciphertext", "key_id")


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
        self._dbapi = store.dbapi
        # Driver SQL, built once (store/audit_tables.py): the append runs it on the driver's cursor.
        self._sql = append_sql(store.paramstyle, _EVENT_COLUMNS, _CONTENT_COLUMNS)

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
                    out = self._append(conn, head, events, contents, ring)
                except self._dbapi.Error as exc:
                    if not self._dropped_by_server(exc):
                        raise
                    # Nothing is committed before the commit: a connection the server dropped, idle
                    # or mid-append, gets one fresh try (the server rolled its transaction back).
                    self._drop(conn)
                    conn = None
                    conn = self._connection()
                    head = self._lock_head(conn)
                    out = self._append(conn, head, events, contents, ring)
                try:
                    conn.commit()
                except self._dbapi.Error as exc:
                    if not self._dropped_by_server(exc):
                        raise
                    # Dropped during the commit: it landed or it did not; the head says which.
                    self._drop(conn)
                    conn = None
                    conn = self._connection()
                    now = self._lock_head(conn)
                    if now == (out[-1].seq, out[-1].mac):
                        conn.rollback()  # it landed: release the head's lock
                        return out
                    if now != head:
                        raise  # another process moved the head: where these records went is unknown
                    out = self._append(conn, head, events, contents, ring)
                    conn.commit()
                return out
            except BaseException as exc:
                if conn is not None:
                    self._drop(conn)  # rolls back; the next append starts on a fresh connection
                mapped = driver_error(self.store.url, self._dbapi, exc)
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

    def _dropped_by_server(self, exc: BaseException) -> bool:
        """A server closed the connection (PostgreSQL restarted, the backend terminated). SQLite
        has no server to drop it: "locked" already waited its timeout."""
        return connection_lost(self._dbapi, exc) and self._engine.dialect.name != "sqlite"

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
            return read_head(conn)

    def records(self, batch: int = 1000) -> Iterator[AuditRecord]:
        """Every stored record in append (id) order, read in batches."""
        last = 0
        while True:
            with self.store.connect() as conn:
                rows = events_after(conn, last, batch)
            for row in rows:
                yield AuditRecord(**row)
            if len(rows) < batch:
                return
            last = rows[-1]["id"]

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
        with self.store.connect() as conn:
            rows = find_events(
                conn,
                principal=principal,
                action=action,
                model=model,
                outcome=outcome,
                since=since,
                until=until,
                limit=limit,
                before_id=before_id,
            )
        return [AuditRecord(**row) for row in rows]


def _content_row(ring: Keyring | None, event: AuditEvent, seq: int, text: str) -> tuple:
    if ring is None:
        raise ValueError("content to log but no master keyring to encrypt it with")
    token = encrypt(ring, content_aad(seq), text)
    # In _CONTENT_COLUMNS' order.
    return (seq, event.request_id, event.at, event.team, event.principal, token, ring.current)
