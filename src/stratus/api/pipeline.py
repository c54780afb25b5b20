"""The request path, composed in one place: which stages run, and in which order.

    identify -> authorize -> admit -> route -> generate (engine) or proxy (upstream) -> settle -> record

Each step runs in a span of its own when tracing is on (observe/tracing.py: stratus.identify,
stratus.authorize, stratus.admit, stratus.settle, stratus.record), under the request's span.

Each stage is defined in the package that owns its job (request/stage.py lists the steps):

    security/stage.py  IdentityStage   who is calling; may they call this route, use this model
    limits/stage.py    LimitsStage     rate limits, quotas and budgets; the usage ledger
    audit/stage.py     AuditStage      lockouts, suspensions; one audit record per request

Where each step runs in the API layer:
  screen, identify, authorize(route)   `deps.request_context`, before the body is read
  authorize(model), route              `deps.Gateway.route` once the body names a model
  admit                                `deps.Gateway.admit` once the prompt is tokenized
  generate / proxy                     `generation.py` / `upstream_proxy.py`
  settle                               when a generation ends, however it ends
  record                               `middleware.RequestContextMiddleware`, once per request: a
                                       complete response before its first byte (a failure turns it
                                       into 503: fail closed); a stream gets an opening record
                                       before its first byte and this one after its last
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar

from stratus.audit.stage import AuditStage
from stratus.limits.stage import LimitsStage, limits_stage
from stratus.observe.tracing import span
from stratus.request.context import RequestContext, Usage
from stratus.request.stage import Stage

if TYPE_CHECKING:
    from stratus.config import Settings
    from stratus.security.access import AccessControl

S = TypeVar("S", bound=Stage)


class Pipeline:
    """Runs each step over the stages in order. A step's refusal (APIError) stops the request."""

    def __init__(self, stages: Iterable[Stage]):
        self.stages = list(stages)

    def stage(self, kind: type[S]) -> S | None:
        """The stage of this kind, if the pipeline has one."""
        return next((s for s in self.stages if isinstance(s, kind)), None)

    def bind(self, state: object) -> None:
        for s in self.stages:
            s.bind(state)

    def close(self) -> None:
        for s in reversed(self.stages):
            s.close()

    async def identify(self, ctx: RequestContext) -> None:
        """screen, identify, then authorize the route: everything that needs no request body."""
        ctx.authenticating = True  # from here on the request gets an audit record
        with span("stratus.identify"):
            for s in self.stages:
                await s.screen(ctx)
            for s in self.stages:
                await s.identify(ctx)
            await self.authorize(ctx, None)

    async def authorize(self, ctx: RequestContext, model: str | None) -> None:
        with span("stratus.authorize", {"stratus.model": ctx.model if model is not None else None}):
            for s in self.stages:
                await s.authorize(ctx, model)

    async def admit(
        self, ctx: RequestContext, prompt_tokens: int, max_tokens: int, sequences: int = 1
    ) -> None:
        attributes = {"stratus.prompt_tokens": prompt_tokens, "stratus.max_tokens": max_tokens}
        with span("stratus.admit", attributes):
            for s in self.stages:
                await s.admit(ctx, prompt_tokens, max_tokens, sequences)

    async def settle(self, ctx: RequestContext, usage: Usage) -> None:
        ctx.usage = usage
        with span("stratus.settle", {"stratus.completion_tokens": usage.completion_tokens}):
            for s in self.stages:
                await s.settle(ctx, usage)

    async def record(self, ctx: RequestContext, refusable: bool = False) -> None:
        """Every stage records, even after one failed; the first failure is raised at the end.
        Last stage first: the audit decision comes before the charge, so a complete response
        (`refusable`) refused because its audit record failed is charged as refused."""
        failure: BaseException | None = None
        with span("stratus.record", {"http.response.status_code": ctx.status}):
            for s in reversed(self.stages):
                try:
                    await s.record(ctx)
                except Exception as exc:
                    if failure is None and refusable:
                        ctx.status, ctx.outcome = 503, "error"
                        if ctx.usage is not None:  # generated, never delivered
                            ctx.usage = Usage(ctx.usage.prompt_tokens, 0, ctx.usage.cached_tokens)
                    failure = failure or exc
            if failure is not None:
                raise failure

    async def may(self, ctx: RequestContext, permission: str) -> bool:
        for s in self.stages:
            if not await s.may(ctx, permission):
                return False
        return True


def build_pipeline(settings: Settings, identity: Stage, access: AccessControl | None) -> Pipeline:
    """identity first; then limits (metering on by default with access control); then audit.
    record runs them last to first: the audit decision, then the charge."""
    stages: list[Stage] = [identity]
    limits: LimitsStage | None = limits_stage(settings, access.store if access is not None else None)
    if limits is not None:
        stages.append(limits)
    if access is not None:
        stages.append(AuditStage.from_settings(settings, access.store))
    return Pipeline(stages)
