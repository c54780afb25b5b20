"""The audit trail: append-only, hash-chained records, each with an HMAC under a server key.

    log = AuditLog(store, key)
    log.append(AuditEvent(action="POST /v1/chat/completions", outcome="ok", status=200, ...))

Each record's MAC covers its canonical form (every field, its `seq` and the MAC of the record
before it), so changing, removing, adding or moving a record breaks the chain at that point
(security/audit_verify.py finds where). The head row is updated first in every append: that
serialises writers (SQLite's write lock, a PostgreSQL row lock) and marks how long the chain is.

A record holds who, what, on which model, the outcome, token counts and where from: never a
secret and never prompt or completion text (`detail` takes small structured facts only). For a
team with content logging on (security/content_log.py) the redacted text goes, encrypted, into
`audit_content` in the same transaction, bound to the record's seq.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields

import sqlalchemy as sa

from stratus.security.secrets import Keyring, encrypt
from stratus.store import Store
from stratus.store.audit_tables import audit_events, audit_head
from stratus.store.review_tables import audit_content

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
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def record_mac(key: bytes, values: dict, seq: int, prev_mac: str) -> str:
    return hmac.new(key, canonical(values, seq, prev_mac), hashlib.sha256).hexdigest()


def head_sig(key: bytes, seq: int, mac: str) -> str:
    return hmac.new(key, f"head|{seq}|{mac}".encode(), hashlib.sha256).hexdigest()


# Built once: constructing a statement per append cost more CPU than the rest of an append
# (SQLAlchemy coerces every clause anew); these are reused with bound parameters.
_LOCK_HEAD = (  # a no-op update that takes the write lock and returns the head it locked
    audit_head.update()
    .where(audit_head.c.id == 1)
    .values(seq=audit_head.c.seq)
    .returning(audit_head.c.seq, audit_head.c.mac)
)
_INSERT_EVENTS = audit_events.insert()
_INSERT_CONTENT = audit_content.insert()
_MOVE_HEAD = (
    audit_head.update()
    .where(audit_head.c.id == 1)
    .values(seq=sa.bindparam("new_seq"), mac=sa.bindparam("new_mac"), sig=sa.bindparam("new_sig"))
)


def detail(**facts) -> str:
    return json.dumps(facts, sort_keys=True, separators=(",", ":"))


class AuditLog:
    """Appends records to, and reads them from, one store."""

    def __init__(self, store: Store, key: bytes):
        self.store = store
        self.key = key
        self._lock = threading.Lock()  # one writer per process; the head row orders processes

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
        out = []
        with self._lock, self.store.begin() as conn:
            seq, prev_mac = self._lock_head(conn)
            rows, texts = [], []
            for i, event in enumerate(events):
                values = {name: getattr(event, name) for name in EVENT_FIELDS}  # all scalars: no deepcopy
                seq += 1
                mac = record_mac(self.key, values, seq, prev_mac)
                rows.append({**values, "seq": seq, "prev_mac": prev_mac, "mac": mac})
                out.append(AuditRecord(**values, seq=seq, prev_mac=prev_mac, mac=mac))
                prev_mac = mac
                if contents is not None and contents[i] is not None:
                    texts.append(_content_row(ring, event, seq, contents[i]))
            conn.execute(_INSERT_EVENTS, rows)
            if texts:
                conn.execute(_INSERT_CONTENT, texts)
            conn.execute(
                _MOVE_HEAD,
                {"new_seq": seq, "new_mac": prev_mac, "new_sig": head_sig(self.key, seq, prev_mac)},
            )
        return out

    def _lock_head(self, conn: sa.Connection) -> tuple[int, str]:
        # A no-op update takes the write lock as it reads the head (SQLite: the database lock;
        # PostgreSQL: the row lock), so two processes never extend the chain from one head.
        row = conn.execute(_LOCK_HEAD).first()
        if row is None:  # the first record ever: create the head, once
            genesis = {"id": 1, "seq": 0, "mac": GENESIS, "sig": head_sig(self.key, 0, GENESIS)}
            insert = _dialect_insert(conn.dialect.name)
            conn.execute(insert(audit_head).values(**genesis).on_conflict_do_nothing())
            row = conn.execute(_LOCK_HEAD).one()
        return row.seq, row.mac

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


def _content_row(ring: Keyring | None, event: AuditEvent, seq: int, text: str) -> dict:
    if ring is None:
        raise ValueError("content to log but no master keyring to encrypt it with")
    token = encrypt(ring, f"audit_content/{seq}", text)  # content_log.aad(seq)
    return {
        "seq": seq,
        "request_id": event.request_id,
        "at": event.at,
        "team": event.team,
        "principal": event.principal,
        "ciphertext": token,
        "key_id": ring.current,
    }


def _dialect_insert(dialect: str):
    """INSERT with ON CONFLICT support (both backends stratus runs on have it)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert
