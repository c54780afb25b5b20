"""Group commit for the audit trail: one writer thread, one transaction (one fsync) per batch.

    writer = AuditWriter(log)
    await writer.write(event)       # returns once the record is committed; raises if it was not
    await writer.write(event, text) # with the request's redacted content (content logging)

Requests that end together share a commit, so the fsync cost is paid once per batch rather than
once per request: throughput grows with concurrency while every caller still learns whether its
own record is durable before its response starts (fail closed keeps its meaning). With
`checkpoints` and `every`, the chain head is appended to that file each time the chain passes a
multiple of `every` records (what `stratus audit verify` checks a truncated tail against).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections.abc import Callable

from stratus.audit.log import AuditEvent, AuditLog, AuditRecord
from stratus.audit.verify import write_checkpoint
from stratus.security.secrets import Keyring

log = logging.getLogger("stratus.audit")

MAX_BATCH = 256
_STOP = object()  # queued by close(): the thread ends after the batch it arrives in


class AuditWriter:
    def __init__(
        self,
        log: AuditLog,
        max_batch: int = MAX_BATCH,
        checkpoints: str | os.PathLike | None = None,
        every: int = 0,
        ring: Callable[[], Keyring] | None = None,
    ):
        self.log = log
        self.ring = ring  # the master keyring, asked for only when a batch holds content
        self.max_batch = max_batch
        self.checkpoints = checkpoints  # every `every` records, the head is appended here
        self.every = every
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._closing = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="stratus-audit-writer", daemon=True)
        self._thread.start()

    async def write(self, event: AuditEvent, content: str | None = None) -> AuditRecord:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        with self._closing:  # a record is queued before the stop, or refused: never after it
            if self._closed:  # nothing would ever answer: fail now, like any write that did not land
                raise RuntimeError("the audit writer is closed")
            self._queue.put((event, content, loop, future))
        return await future

    def close(self, timeout: float = 30.0) -> bool:
        """Write what is queued, then stop the thread (gateway shutdown); later writes raise.
        False if the thread was still writing after `timeout` seconds."""
        with self._closing:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        # The head is pinned outside the database when the gateway starts and when it stops, and
        # every `every` records between: a later rollback or emptying of the chain shows in verify.
        if self.checkpoints:
            self._checkpoint()
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:  # queued before the stop: still written (close() waits for it)
                stopping = True
                batch = [item for item in batch if item is not _STOP]
                if not batch:
                    break
            try:
                contents = [content for _, content, _, _ in batch]
                if any(c is not None for c in contents):
                    ring = self.ring() if self.ring is not None else None
                    records = self.log.append_many([e for e, _, _, _ in batch], contents, ring)
                else:
                    records = self.log.append_many([e for e, _, _, _ in batch])
            except Exception as exc:  # every caller of the batch learns it failed
                _settle(batch, [exc] * len(batch), _fail)
                continue
            if self.checkpoints and self.every > 0:
                last = records[-1].seq
                if last // self.every != (last - len(records)) // self.every:
                    self._checkpoint()  # before the callers resume: rare, and then deterministic
            _settle(batch, records, _done)
        if self.checkpoints:
            self._checkpoint()

    def _checkpoint(self) -> None:
        try:
            write_checkpoint(self.log, self.checkpoints)
        except Exception:
            log.exception("could not write an audit checkpoint to %s", self.checkpoints)


def _settle(batch: list, results: list, how: Callable) -> None:
    """Hands each caller its result: one wake-up of each event loop per batch, not per record
    (every call_soon_threadsafe writes to the loop's self-pipe)."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for (_, _, loop, future), result in zip(batch, results, strict=True):
        by_loop.setdefault(loop, []).append((future, result))
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, pairs, how)
        except RuntimeError:  # that loop has closed: nobody is waiting there any more
            pass


def _resolve(pairs: list, how: Callable) -> None:
    for future, result in pairs:
        how(future, result)


def _done(future: asyncio.Future, record: AuditRecord) -> None:
    if not future.done():
        future.set_result(record)


def _fail(future: asyncio.Future, exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
