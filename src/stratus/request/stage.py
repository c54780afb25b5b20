"""`Stage`: one feature's part in the request path, a step at a time.

The gateway runs every request through the same steps, in this order:

    screen     before credentials are read: refuse a locked-out source        audit/stage.py
    identify   credentials -> ctx.principal; a suspended key is refused        security/stage.py, audit/stage.py
    authorize  may the principal call this route (model None), use this model? security/stage.py;
               a generation request is counted against rpm limits here         limits/stage.py
    admit      rate limits, quota and budget: reserve                         limits/stage.py
    (route and generate, or proxy: the API layer, cluster/ and engine/)
    settle     charge what a stream delivered                                 limits/stage.py
    record     once per request, whatever its outcome: the audit record,     audit/stage.py, limits/stage.py
               then the charge of a complete response and the ledger row

A stage implements the steps it takes part in; the others are no-ops. api/pipeline.py composes
the stages, in order, in one place. A step refuses a request by raising `APIError`.
"""

from __future__ import annotations

from typing import Any

from stratus.request.context import RequestContext, Usage


class Stage:
    """Every step is a no-op here; a stage overrides the ones it takes part in."""

    def bind(self, state: Any) -> None:
        """Called once when the app is built, with its `AppState` (settings, served models)."""

    def close(self) -> None:
        """Called once at shutdown, after the last request, before the store closes."""

    async def screen(self, ctx: RequestContext) -> None:
        """Before credentials are read (raise APIError 429 to refuse a locked-out source)."""

    async def identify(self, ctx: RequestContext) -> None:
        """Set ctx.principal from ctx.authorization, or refuse (APIError 401/403)."""

    async def authorize(self, ctx: RequestContext, model: str | None) -> None:
        """May ctx.principal call ctx.route (model None) or use `model`? (APIError 403/404)."""

    async def admit(
        self, ctx: RequestContext, prompt_tokens: int, max_tokens: int, sequences: int = 1
    ) -> None:
        """Limits, quota and budget for this many tokens and sequences (prompts × n) (APIError 429)."""

    async def settle(self, ctx: RequestContext, usage: Usage) -> None:
        """Charge the tokens actually delivered."""

    async def record(self, ctx: RequestContext) -> None:
        """Once per request, last. Raising before a complete response has started refuses it
        with 503 (fail closed)."""

    async def may(self, ctx: RequestContext, permission: str) -> bool:
        """May this caller (perhaps anonymous) see what `permission` guards? Never raises; for
        routes that answer everyone but show details only to some (/ready)."""
        return True
