"""Group commit: concurrent writers share transactions; checkpoints are written as the chain grows."""

from __future__ import annotations

import asyncio
import json

import pytest

from stratus.audit.log import AuditEvent, AuditLog
from stratus.audit.verify import last_checkpoint, verify
from stratus.audit.writer import AuditWriter
from stratus.store import Store, database_url


def test_concurrent_writes_all_land_in_order_and_checkpoints_follow(tmp_path):
    store = Store.open(database_url(tmp_path))
    log = AuditLog(store, b"w" * 32)
    path = tmp_path / "checkpoints.jsonl"
    writer = AuditWriter(log, checkpoints=path, every=10)

    async def many():
        return await asyncio.gather(
            *(writer.write(AuditEvent(action="x", outcome="ok", request_id=str(i))) for i in range(25))
        )

    records = asyncio.run(many())
    assert sorted(r.seq for r in records) == list(range(1, 26))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert 1 <= len(lines) <= 2 and lines[-1]["seq"] >= 20  # one per batch that passes a multiple of 10
    report = verify(log, last_checkpoint(path, log.key))
    assert report.ok, report.problems
    store.close()


def test_a_failed_batch_fails_each_waiting_caller(tmp_path):
    store = Store.open(database_url(tmp_path))
    log = AuditLog(store, b"w" * 32)
    writer = AuditWriter(log)

    def broken(events):
        raise OSError("disk full")

    log.append_many = broken

    async def one():
        try:
            await writer.write(AuditEvent(action="x", outcome="ok"))
        except OSError as exc:
            return str(exc)

    assert asyncio.run(one()) == "disk full"
    store.close()


def test_close_writes_what_was_queued_then_refuses_more(tmp_path):
    """Gateway shutdown: records already handed to the writer land; a later write fails at once
    instead of waiting for a thread that has stopped."""
    store = Store.open(database_url(tmp_path))
    log = AuditLog(store, b"w" * 32)
    writer = AuditWriter(log)

    async def scenario():
        pending = [
            asyncio.create_task(writer.write(AuditEvent(action="x", outcome="ok", request_id=str(i))))
            for i in range(40)
        ]
        await asyncio.sleep(0)  # every task has queued its record
        await asyncio.to_thread(writer.close)
        records = await asyncio.gather(*pending)
        with pytest.raises(RuntimeError, match="closed"):
            await writer.write(AuditEvent(action="x", outcome="ok"))
        return records

    records = asyncio.run(scenario())
    assert sorted(r.seq for r in records) == list(range(1, 41))
    assert not writer._thread.is_alive()
    assert verify(log).ok
    store.close()


def test_close_reports_a_writer_still_busy(tmp_path):
    """A stalled commit outlasts close()'s wait: close says so (the gateway then leaves the
    connection to the thread still using it) and the record still lands once the commit returns."""
    import threading

    store = Store.open(database_url(tmp_path))
    log = AuditLog(store, b"w" * 32)
    writer = AuditWriter(log)
    stalled, real = threading.Event(), log.append_many

    def slow(events, *rest):
        stalled.wait(5)
        return real(events, *rest)

    log.append_many = slow

    async def scenario():
        pending = asyncio.create_task(writer.write(AuditEvent(action="x", outcome="ok")))
        await asyncio.sleep(0.05)  # the thread holds it, inside the stalled commit
        assert await asyncio.to_thread(writer.close, 0.2) is False
        stalled.set()
        return await pending

    assert asyncio.run(scenario()).seq == 1
    assert writer.close() is True  # and now it has stopped
    store.close()
