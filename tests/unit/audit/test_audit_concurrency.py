"""Two writers (as two gateways would be) extend one chain without forking it: SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from stratus.audit.log import AuditEvent, AuditLog
from stratus.audit.verify import verify
from stratus.store import Store, database_url
from tests.pg import scratch_database

KEY = b"k" * 32


def hammer(url: str) -> None:
    stores = [Store.open(url), Store.open(url)]  # separate engines: separate connections
    logs = [AuditLog(s, KEY) for s in stores]

    def write(log: AuditLog, who: str) -> None:
        for i in range(25):
            if i % 5 == 0:
                log.append_many([AuditEvent(action="batch", outcome="ok", principal=who)] * 3)
            else:
                log.append(AuditEvent(action="one", outcome="ok", principal=who))

    threads = [threading.Thread(target=write, args=(log, f"w{n}")) for n, log in enumerate(logs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = verify(logs[0])
    assert report.ok, report.problems
    assert report.records == 2 * (20 + 5 * 3)
    for s in stores:
        s.close()


def test_two_writers_on_sqlite(tmp_path):
    hammer(database_url(tmp_path))


@pytest.mark.timeout(120)
def test_two_writers_on_postgresql():
    with scratch_database() as url:
        hammer(url)
