"""Interleave several async streams as their items arrive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TypeVar

import anyio

T = TypeVar("T")


async def merge_streams(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """(stream index, item) pairs as items arrive. The first exception of any stream is raised
    here; closing this iterator (or an exception) closes every stream."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for item in only:
                yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(which: int, stream: AsyncIterator[T]) -> None:
        try:
            async with aclosing(stream) as s:
                async for item in s:
                    queue.put_nowait((which, item))
        except Exception as exc:
            queue.put_nowait((which, exc))
        finally:
            queue.put_nowait((which, done))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            which, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield which, item
    finally:
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)
