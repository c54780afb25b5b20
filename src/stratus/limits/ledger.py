"""Group commit for the usage ledger: rows that arrive while a write is in progress go together
in the next transaction, so concurrent requests share one commit (one fsync) instead of queueing
for one each. Every caller still waits until its own row is durable.

    writer = LedgerWriter(store, spool=Path("data/ledger-spool.jsonl"))
    await writer.write(row)       # returns once the row is durable; raises if it cannot be

A failed batch is retried once on a fresh connection, then row by row, so one bad row fails
only itself. A row the database will not take is appended (fsync'd) to the spool file and
replayed into the database once writes succeed again; a row is lost to no one: it is either in
the database, in the spool, or its caller is told (and refuses the response).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import threading
import time
from pathlib import Path

from stratus.store import Store
from stratus.store import usage as ledger

MAX_BATCH = 256
REPLAY_EVERY_S = 5.0  # at most this often, the spool is replayed after a successful commit

log = logging.getLogger("stratus.limits")


class LedgerWriter:
    def __init__(self, store: Store, spool: str | os.PathLike | None = None):
        self.store = store
        self.spool = Path(spool) if spool is not None else None
        self._pending: list[tuple[ledger.UsageRow, asyncio.Future]] = []
        self._draining: asyncio.Task | None = None
        self._spool_lock = threading.Lock()
        self._replayed_at = 0.0

    async def write(self, row: ledger.UsageRow) -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._pending.append((row, done))
        if self._draining is None or self._draining.done():
            self._draining = loop.create_task(self._drain(), name="stratus-ledger-writer")
        await asyncio.shield(done)  # a cancelled caller must not cancel the others' commit

    def _insert(self, rows: list[ledger.UsageRow]) -> None:
        with self.store.begin() as conn:
            ledger.record_many(conn, rows)

    def _insert_missing(self, rows: list[ledger.UsageRow]) -> None:
        """A retry: a commit whose acknowledgement was lost (the connection dropped as it
        committed) may have landed, so a row already there is not written twice."""
        with self.store.begin() as conn:
            for row in rows:
                if not ledger.has_row(conn, row.request_id, row.time, row.status):
                    ledger.record(conn, row)

    def _commit(self, rows: list[ledger.UsageRow]) -> list[Exception | None]:
        """Each row's fate: None when it is durable (in the database or the spool)."""
        for attempt in range(2):  # the second on a fresh connection from the pool
            try:
                (self._insert_missing if attempt else self._insert)(rows)
            except Exception as exc:
                log.warning("usage ledger: a batch of %d rows failed (%s)", len(rows), type(exc).__name__)
                continue
            self._replay_spool()
            return [None] * len(rows)
        fates: list[Exception | None] = []
        for row in rows:  # one at a time: a bad row fails only itself
            try:
                self._insert_missing([row])
                fates.append(None)
            except Exception as exc:
                fates.append(self._to_spool(row, exc))
        return fates

    def _to_spool(self, row: ledger.UsageRow, cause: Exception) -> Exception | None:
        if self.spool is None:
            return cause
        try:
            with self._spool_lock:
                fd = os.open(self.spool, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                with os.fdopen(fd, "a") as f:
                    f.write(json.dumps(dataclasses.asdict(row)) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as exc:
            log.error(
                "usage ledger: row of request %s is in neither the database nor the spool (%s)",
                row.request_id,
                exc,
            )
            return exc
        log.error(
            "usage ledger: row of request %s spooled to %s (%s); it is replayed when the database takes writes",
            row.request_id,
            self.spool,
            type(cause).__name__,
        )
        return None

    def _replay_spool(self) -> None:
        """Move spooled rows into the database (once each: a row already there is skipped)."""
        if self.spool is None or time.monotonic() - self._replayed_at < REPLAY_EVERY_S:
            return
        self._replayed_at = time.monotonic()
        with self._spool_lock:
            try:
                lines = self.spool.read_text().splitlines() if self.spool.exists() else []
            except OSError:
                return
            rows = [ledger.UsageRow(**json.loads(line)) for line in lines if line.strip()]
            if not rows:
                return
            try:
                with self.store.begin() as conn:
                    for row in rows:
                        if not ledger.has_row(conn, row.request_id, row.time, row.status):
                            ledger.record(conn, row)
            except Exception as exc:
                log.warning(
                    "usage ledger: replaying %d spooled rows failed (%s)", len(rows), type(exc).__name__
                )
                return
            self.spool.write_text("")
        log.warning("usage ledger: %d spooled rows written to the database", len(rows))

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            fates = await asyncio.to_thread(self._commit, [row for row, _ in batch])
            for (_, done), fate in zip(batch, fates, strict=True):
                if done.done():
                    continue
                if fate is None:
                    done.set_result(None)
                else:
                    done.set_exception(fate)
