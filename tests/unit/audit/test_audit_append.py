"""The append's fast path: the canonical form (orjson) writes exactly the bytes the original encoder
wrote, so records stored before and after it verify alike; the raw-connection append keeps the
Store's errors and survives a dropped connection."""

from __future__ import annotations

import json

import pytest

from stratus.audit.log import EVENT_FIELDS, AuditEvent, AuditLog, canonical
from stratus.audit.verify import verify
from stratus.store import Store, StoreUnavailable, database_url
from tests.pg import scratch_database

pytestmark = pytest.mark.timeout(60)

AWKWARD = [
    "plain ascii",
    'a "quoted" word',
    "back\\slash",
    "tab\there, newline\n, bell\x07, del\x7f",
    "naïve café ✓ 日本語 🎉",
    "lone surrogate \ud800",
    "</script> & slashes / too",
    "",
]


def reference(values: dict, seq: int, prev_mac: str) -> bytes:
    """The encoder every record before the fast path was MAC'd with."""
    body = {name: values.get(name) for name in EVENT_FIELDS}
    body["at"] = repr(float(body["at"]))
    body["seq"] = seq
    body["prev_mac"] = prev_mac
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@pytest.mark.parametrize("text", AWKWARD)
def test_canonical_matches_the_original_encoder(text):
    event = AuditEvent(
        action="POST /v1/chat/completions",
        outcome="ok",
        at=1764380000.123456789,
        principal=text,
        user_agent=text,
        detail=json.dumps({"note": text}),
        status=200,
        prompt_tokens=2**70,  # past 64 bits: orjson refuses it, the original encoder does not
    )
    values = {name: getattr(event, name) for name in EVENT_FIELDS}
    for tokens in (12, 2**70):
        for extra in (None, values["detail"]):  # without detail, plain text takes the fast path
            values["prompt_tokens"], values["detail"] = tokens, extra
            assert canonical(values, 7, "ab" * 32) == reference(values, 7, "ab" * 32)


def test_awkward_records_append_and_verify(tmp_path):
    store = Store.open(database_url(tmp_path))
    log = AuditLog(store, b"k" * 32)
    for i, text in enumerate(t for t in AWKWARD if "\ud800" not in t):  # SQLite stores UTF-8 only
        log.append(AuditEvent(action="x", outcome="ok", request_id=str(i), user_agent=text))
    report = verify(log)
    assert report.ok, report.problems
    assert [r.user_agent for r in log.records()][-1] == ""
    store.close()


def test_a_failed_append_is_store_unavailable_and_moves_nothing(tmp_path):
    store = Store.open(database_url(tmp_path))
    log = AuditLog(store, b"k" * 32)
    log.append(AuditEvent(action="x", outcome="ok"))
    before = log.head()
    with store.begin() as conn:  # the append's INSERT now fails inside its transaction
        conn.exec_driver_sql("ALTER TABLE audit_events RENAME TO audit_events_gone")
    with pytest.raises(StoreUnavailable):
        log.append(AuditEvent(action="y", outcome="ok"))
    assert log.head() == before  # rolled back: the head did not move past a lost record
    store.close()


def test_the_writer_connection_comes_back_after_the_server_drops_it():
    """The append keeps its own connection between appends; PostgreSQL ending that session
    (an idle timeout, a restart) costs no record: the next append reconnects before writing."""
    with scratch_database() as url:
        store = Store.open(url)
        log = AuditLog(store, b"k" * 32)
        log.append(AuditEvent(action="before", outcome="ok"))
        pid = log._conn.dbapi_connection.info.backend_pid
        with store.begin() as conn:
            assert conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})").scalar() is True
        log.append(AuditEvent(action="after", outcome="ok"))
        assert [r.action for r in log.records()] == ["before", "after"]
        assert verify(log).ok
        log.close()
        store.close()


def test_a_connection_dropped_mid_append_gets_one_fresh_try():
    """PostgreSQL ends the writer's session while its transaction is open (after the head is
    locked): nothing was committed, so the append is redone on a fresh connection."""
    with scratch_database() as url:
        store = Store.open(url)
        log = AuditLog(store, b"k" * 32)
        log.append(AuditEvent(action="before", outcome="ok"))
        real, calls = log._append, []

        def terminated_first(conn, *args):
            if not calls:
                with store.begin() as other:
                    pid = int(conn.dbapi_connection.info.backend_pid)
                    other.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
            calls.append(1)
            return real(conn, *args)

        log._append = terminated_first
        log.append(AuditEvent(action="during", outcome="ok"))
        assert len(calls) == 2
        assert [r.action for r in log.records()] == ["before", "during"]
        assert verify(log).ok
        log.close()
        store.close()


class _CommitLost:
    """A driver connection whose first commit is lost: after it landed (`landed`), or before."""

    def __init__(self, conn, landed: bool):
        self._conn, self._landed = conn, landed

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def commit(self):
        import psycopg

        (self._conn.commit if self._landed else self._conn.rollback)()
        raise psycopg.OperationalError("server closed the connection unexpectedly")


@pytest.mark.parametrize("landed", [True, False], ids=["landed", "not-landed"])
def test_a_commit_whose_acknowledgement_is_lost_is_kept_once(landed):
    """The connection dropped during the commit: the head on a fresh connection says whether the
    records landed; they are in the chain exactly once either way."""
    with scratch_database() as url:
        store = Store.open(url)
        log = AuditLog(store, b"k" * 32)
        log.append(AuditEvent(action="before", outcome="ok"))
        real, wrapped = log._connection, []

        def first_commit_lost():
            conn = real()
            if not wrapped:
                wrapped.append(conn)
                log._conn = _CommitLost(conn, landed)
                return log._conn
            return conn

        log._connection = first_commit_lost
        log._conn = None  # the next append takes a connection through the wrapper
        records = log.append_many(
            [AuditEvent(action="a", outcome="ok"), AuditEvent(action="b", outcome="ok")]
        )
        assert [r.seq for r in records] == [2, 3]
        assert [r.action for r in log.records()] == ["before", "a", "b"]
        assert log.head()[:2] == (3, records[-1].mac)
        assert verify(log).ok
        log.close()
        store.close()


def test_a_store_pointed_elsewhere_is_followed(tmp_path):
    """The kept connection belongs to the engine it came from: a Store re-pointed at a database
    that cannot be opened fails the append (503 upstream) instead of writing to the old one."""
    import sqlalchemy as sa

    store = Store.open(database_url(tmp_path))
    log = AuditLog(store, b"k" * 32)
    log.append(AuditEvent(action="before", outcome="ok"))
    working = store.engine
    store.engine = sa.create_engine(f"sqlite:///{tmp_path / 'gone' / 'stratus.db'}")
    with pytest.raises(StoreUnavailable):
        log.append(AuditEvent(action="lost", outcome="ok"))
    store.engine = working
    log.append(AuditEvent(action="after", outcome="ok"))
    assert [r.action for r in log.records()] == ["before", "after"]
    assert verify(log).ok
    store.close()
