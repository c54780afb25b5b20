"""Group commit for the usage ledger: rows that arrive while a write is in progress go together
in the next transaction, so concurrent requests share one commit (one fsync) instead of queueing
for one each. Every caller still waits until its own row is committed.

    writer = LedgerWriter(store)
    await writer.write(row)       # returns once the row is durable; raises if the write failed
"""

from __future__ import annotations

import asyncio

from stratus.store import Store
from stratus.store import usage as ledger

MAX_BATCH = 256


class LedgerWriter:
    def __init__(self, store: Store):
        self.store = store
        self._pending: list[tuple[ledger.UsageRow, asyncio.Future]] = []
        self._draining: asyncio.Task | None = None

    async def write(self, row: ledger.UsageRow) -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._pending.append((row, done))
        if self._draining is None or self._draining.done():
            self._draining = loop.create_task(self._drain(), name="stratus-ledger-writer")
        await asyncio.shield(done)  # a cancelled caller must not cancel the others' commit

    def _insert(self, rows: list[ledger.UsageRow]) -> None:
        with self.store.begin() as conn:
            for row in rows:
                ledger.record(conn, row)

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                await asyncio.to_thread(self._insert, [row for row, _ in batch])
            except Exception as exc:  # every waiter of the batch learns of it
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
