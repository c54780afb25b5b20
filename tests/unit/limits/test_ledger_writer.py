"""The ledger writer keeps every row somewhere durable: a failed batch is retried, then written
row by row (one bad row fails only itself), and a row the database refuses is spooled to a local
file and replayed, once, when writes succeed again. Only a row kept nowhere fails its caller."""

from __future__ import annotations

import asyncio

import pytest

import stratus.limits.ledger as ledger_writer
from stratus.limits.ledger import LedgerWriter
from stratus.store import Store, database_url
from stratus.store import usage as ledger


def row(i: int, status: str = "ok") -> ledger.UsageRow:
    return ledger.UsageRow(
        f"r{i}", 1000.0 + i, "2026-12-06", "key_a", "alice", "ml", "tiny", 10, 5, 7, status, 1.0
    )


def stored(store) -> list[str]:
    with store.connect() as conn:
        return sorted(r["request_id"] for r in conn.execute(ledger.usage_ledger.select()).mappings())


@pytest.fixture
def store(tmp_path):
    s = Store.open(database_url(tmp_path))
    yield s
    s.close()


def write_all(writer, rows):
    async def go():
        return await asyncio.gather(*(writer.write(r) for r in rows), return_exceptions=True)

    return asyncio.run(go())


def test_a_bad_row_fails_only_itself_and_is_spooled_then_replayed(store, tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_writer, "REPLAY_EVERY_S", 0.0)
    real, real_many = ledger.record, ledger.record_many

    def refuse_r3(conn, r):
        if r.request_id == "r3":
            raise RuntimeError("constraint violation")
        real(conn, r)

    def refuse_batch_with_r3(conn, rows):  # one statement for the batch: it fails as a whole
        if any(r.request_id == "r3" for r in rows):
            raise RuntimeError("constraint violation")
        real_many(conn, rows)

    spool = tmp_path / "spool.jsonl"
    writer = LedgerWriter(store, spool)
    monkeypatch.setattr(ledger, "record", refuse_r3)
    monkeypatch.setattr(ledger, "record_many", refuse_batch_with_r3)
    results = write_all(writer, [row(i) for i in range(6)])
    assert results == [None] * 6  # every caller's row is durable somewhere
    assert stored(store) == ["r0", "r1", "r2", "r4", "r5"]
    assert "r3" in spool.read_text()
    monkeypatch.setattr(ledger, "record", real)
    monkeypatch.setattr(ledger, "record_many", real_many)
    write_all(writer, [row(7)])  # the next good commit replays the spool
    assert stored(store) == ["r0", "r1", "r2", "r3", "r4", "r5", "r7"]
    assert spool.read_text() == ""
    write_all(writer, [row(8)])
    assert stored(store).count("r3") == 1  # replayed once


def test_a_transient_failure_is_retried(store, tmp_path, monkeypatch):
    real = LedgerWriter._insert
    calls = []

    def flaky(self, rows):
        calls.append(len(rows))
        if len(calls) == 1:
            raise ConnectionError("server closed the connection")
        real(self, rows)

    monkeypatch.setattr(LedgerWriter, "_insert", flaky)
    writer = LedgerWriter(store, tmp_path / "spool.jsonl")
    assert write_all(writer, [row(1), row(2)]) == [None, None]
    assert stored(store) == ["r1", "r2"] and not (tmp_path / "spool.jsonl").exists()


def test_a_row_kept_nowhere_fails_its_caller(store, tmp_path, monkeypatch):
    def broken(conn, r):
        raise OSError("disk full")

    monkeypatch.setattr(ledger, "record", broken)
    monkeypatch.setattr(ledger, "record_many", broken)
    writer = LedgerWriter(store, tmp_path / "no-such-dir" / "spool.jsonl")
    (result,) = write_all(writer, [row(1)])
    assert isinstance(result, OSError)


def test_a_batch_whose_commit_landed_unacknowledged_is_not_written_twice(store, tmp_path, monkeypatch):
    """The connection dropped as the commit went through: the retry finds the rows there."""
    real = LedgerWriter._insert

    def lost_ack(self, rows):
        real(self, rows)  # committed...
        raise ConnectionError("server closed the connection unexpectedly")  # ...unacknowledged

    monkeypatch.setattr(LedgerWriter, "_insert", lost_ack)
    writer = LedgerWriter(store, tmp_path / "spool.jsonl")
    assert write_all(writer, [row(1), row(2)]) == [None, None]
    assert stored(store) == ["r1", "r2"]  # once each, not charged twice
