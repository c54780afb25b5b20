"""The usage ledger and limit rules tables on SQLite and PostgreSQL: migration, rows, aggregates,
visibility filters, and group commit."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from stratus.limits.ledger import LedgerWriter
from stratus.store import Store, database_url
from stratus.store import usage as ledger
from tests.pg import scratch_database


@contextlib.contextmanager
def opened(backend, tmp_path):
    if backend == "sqlite":
        store = Store.open(database_url(tmp_path))
        yield store
        store.close()
    else:
        with scratch_database() as url:
            store = Store.open(url)
            yield store
            store.close()


def row(i, user, team, model, day, prompt=10, completion=5, cost=7, status="ok"):
    return ledger.UsageRow(
        f"r{i}", 1000.0 + i, day, f"key_{user}", user, team, model, prompt, completion, cost, status, 12.5
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_ledger_aggregates_and_limit_rules(backend, tmp_path):
    with opened(backend, tmp_path) as store:
        rows = [
            row(0, "alice", "ml", "tiny", "2026-11-01"),
            row(1, "alice", "ml", "tiny", "2026-11-02"),
            row(2, "bob", "ml", "big", "2026-11-02", completion=50, cost=1_500_000),
            row(3, "carol", None, "tiny", "2026-11-02"),
            row(4, "bob", "ml", "big", "2026-11-02", 0, 0, 0, status="refused_429"),  # a refusal
        ]

        async def write_all():
            writer = LedgerWriter(store)
            await asyncio.gather(*(writer.write(r) for r in rows))  # one or two commits

        asyncio.run(write_all())
        with store.connect() as conn:
            by_team = ledger.aggregate(conn, 0, 2000, ["team"])
            teams = sorted((str(r["team"]), r["requests"], r["total_tokens"]) for r in by_team)
            assert teams == [("None", 1, 15), ("ml", 4, 90)]  # NULL sorts first or last by backend
            by_day_model = ledger.aggregate(conn, 0, 2000, ["day", "model"])
            assert [(r["day"], r["model"], r["requests"]) for r in by_day_model] == [
                ("2026-11-01", "tiny", 1),
                ("2026-11-02", "big", 2),
                ("2026-11-02", "tiny", 2),
            ]
            bob = ledger.aggregate(conn, 0, 2000, ["user"], users=["bob"])
            assert bob == [
                {
                    "user": "bob",
                    "requests": 2,
                    "refused": 1,
                    "prompt_tokens": 10,
                    "completion_tokens": 50,
                    "total_tokens": 60,
                    "cost_usd": 1.5,
                }
            ]
            seen = ledger.aggregate(conn, 0, 2000, ["user"], users=["carol"], teams=["ml"])
            assert {r["user"] for r in seen} == {"alice", "bob", "carol"}
            assert ledger.aggregate(conn, 1001.5, 2000, [])[0]["requests"] == 3  # since is inclusive
            by_status = ledger.aggregate(conn, 0, 2000, ["status"])
            assert [(r["status"], r["requests"], r["refused"], r["total_tokens"]) for r in by_status] == [
                ("ok", 4, 0, 105),
                ("refused_429", 1, 1, 0),
            ]

        with store.begin() as conn:
            ledger.put_limit(conn, {"scope": "team", "subject": "ml", "rpm": 5}, 1.0, "t")
            ledger.put_limit(conn, {"scope": "team", "subject": "ml", "tpm": 9}, 2.0, "t")  # replaces
            ledger.put_limit(conn, {"scope": "team", "subject": "ml", "model": "tiny", "rpm": 1}, 3.0, "t")
        with store.connect() as conn:
            assert ledger.list_limits(conn) == [
                {"scope": "team", "subject": "ml", "model": None, "tpm": 9},
                {"scope": "team", "subject": "ml", "model": "tiny", "rpm": 1},
            ]
        with store.begin() as conn:
            assert ledger.delete_limit(conn, "team", "ml", "tiny")
            assert not ledger.delete_limit(conn, "team", "ml", "tiny")
