"""The steps every request goes through (DESIGN.md, "The path of one request").

    1 identify  2 guard  3 authorize  4 admit  5 route  6 generate  7 account  8 record

`RequestHooks` holds the steps that other parts of stratus provide: identity (security/identity,
which owns `Principal`; api/auth.py holds the hooks that access control passes in),
guard (security/anomaly), authorize (security/rbac), admit and account (security/limits), and
record (security/audit). The defaults below are the open, unmetered, unaudited gateway of a
development server: everyone is the anonymous principal and every hook lets the request through.
Access control replaces them by passing its own `RequestHooks` subclass to `create_app`.

Where each step runs:
  identify, guard   a FastAPI dependency (`deps.request_context`), before the body is validated
  authorize, route  `deps.Gateway.route` once the body names a model
  admit             `deps.Gateway.admit` once the prompt is tokenized (token counts known)
  generate          `generation.py`
  account           when a generation ends, however it ends (also a client disconnect)
  record            `RequestContextMiddleware`, exactly once per request: a complete response
                    before its first byte (a raising hook turns it into 503: fail closed), a
                    stream after its last byte, a request the client left when it ends
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from stratus.api.ids import new_id
from stratus.security.identity import ANONYMOUS, Principal
from stratus.security.keys import display_prefix, lookup_of

if TYPE_CHECKING:
    from stratus.api.state import AppState

__all__ = ["ANONYMOUS", "OPEN_ACCESS", "Principal", "RequestContext", "RequestHooks", "Usage"]


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    from_response_cache: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


@dataclass
class RequestContext:
    """What the gateway knows about one request as it moves through the steps."""

    request_id: str
    method: str
    path: str
    client: str | None
    started: float = field(default_factory=time.perf_counter)  # for durations
    started_at: float = field(default_factory=time.time)  # wall clock, for records
    principal: Principal | None = None  # set by identify
    route: str | None = None  # the route template, e.g. /v1/models/{model_id}
    model: str | None = None
    status: int | None = None
    outcome: str = "ok"  # ok | error | client_disconnect | aborted
    usage: Usage | None = None
    error: str | None = None  # the client-facing message of an error response
    response_headers: dict[str, str] = field(default_factory=dict)  # sent with the response (x-ratelimit-*)
    user_agent: str | None = None
    credential_prefix: str | None = None  # public prefix of a presented API key (never the secret)
    authenticating: bool = False  # step 1 was reached: the request gets an audit record
    body: dict | None = None  # the parsed JSON body; read only by content logging (off by default)
    completions: list[str] | None = None  # generated texts, likewise only for content logging
    failovers: list[dict] = field(default_factory=list)  # replica retries/migrations, for the audit

    @classmethod
    def from_scope(cls, scope: dict) -> RequestContext:
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID_RE.match(given) else new_id()
        client = scope.get("client")
        agent = headers.get(b"user-agent")
        return cls(
            request_id=request_id,
            method=scope.get("method", ""),
            path=scope.get("path", ""),
            client=f"{client[0]}:{client[1]}" if client else None,
            user_agent=agent.decode("latin-1")[:256] if agent else None,
            credential_prefix=_key_prefix(headers.get(b"authorization")),
        )


def _key_prefix(authorization: bytes | None) -> str | None:
    if not authorization or len(authorization) > 300:
        return None
    scheme, _, token = authorization.decode("latin-1").partition(" ")
    lookup = lookup_of(token.strip()) if scheme.lower() == "bearer" else None
    return display_prefix(lookup) if lookup else None


class RequestHooks:
    """The pluggable steps. Every method here is a no-op: no auth, no limits, no audit."""

    def bind(self, state: AppState) -> None:
        """Called once by `create_app` with the app's state (the served models, settings)."""

    def close(self) -> None:
        """Called once at shutdown, after the last request, before the store closes."""

    async def may(self, request: Request, ctx: RequestContext, permission: str) -> bool:
        """May this caller (perhaps anonymous) see what `permission` guards? Never raises; for
        routes that answer everyone but show details only to some (/ready)."""
        return True

    async def identify(self, request: Request, ctx: RequestContext) -> Principal:
        """Step 1: turn credentials into a Principal (raise APIError 401 to refuse)."""
        return ANONYMOUS

    async def guard(self, request: Request, ctx: RequestContext) -> None:
        """Step 2: lockouts and anomaly checks (raise APIError 403/429 to refuse)."""

    async def authorize(self, ctx: RequestContext, model: str | None) -> None:
        """Step 3: may ctx.principal call ctx.route, and use `model`? (raise APIError 403)."""

    async def admit(self, ctx: RequestContext, prompt_tokens: int, max_tokens: int) -> None:
        """Step 4: rate limits, quota and budget for this many tokens (raise APIError 429)."""

    async def account(self, ctx: RequestContext, usage: Usage) -> None:
        """Step 7: charge the tokens actually used to the principal's key and team."""

    async def record(self, ctx: RequestContext) -> None:
        """Step 8: the audit event; called exactly once per request, whatever its outcome.
        Raising before a complete response has started refuses it with 503 (fail closed)."""


OPEN_ACCESS = RequestHooks()
