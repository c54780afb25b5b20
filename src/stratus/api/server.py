"""The HTTP server `stratus serve` runs: uvicorn's, with a drain that ends streams properly."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from stratus.api.registry import ModelRegistry

log = logging.getLogger("stratus")


class DrainingServer(uvicorn.Server):
    """uvicorn's server, plus one thing at shutdown: generations still running just before the
    drain timeout expires are aborted in the engine, so that their streams end through the
    aborted path (an error event, then [DONE]) instead of being cut mid-token."""

    ABORT_MARGIN_S = 1.0  # before the drain deadline: time for the aborts to reach the clients

    def __init__(self, config: uvicorn.Config, registry: ModelRegistry, drain_timeout: float):
        super().__init__(config)
        self.registry = registry
        self.drain_timeout = drain_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._abort_scheduled = False

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None and not self._abort_scheduled:
            self._abort_scheduled = True
            self._loop.call_soon_threadsafe(self._schedule_abort)

    def _schedule_abort(self) -> None:
        assert self._loop is not None
        delay = max(self.drain_timeout - self.ABORT_MARGIN_S, 0.0)
        self._loop.call_later(delay, lambda: asyncio.ensure_future(self._abort()))

    async def _abort(self) -> None:
        aborted = await self.registry.abort_all()
        if aborted:
            log.warning(
                "drain timeout: aborted %d generations still running; their streams end with an error",
                aborted,
            )
