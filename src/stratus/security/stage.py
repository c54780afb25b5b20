"""Access control in the request path: identify the caller, authorize the route and the model.

    identify   the bearer credential -> Principal (security/access.py; cached a few seconds, else
               looked up in a worker thread)
    authorize  the route's declared permission (security/rbac.py) when `model` is None; else the
               model named by the request: one the caller may not use gets exactly the 404 of a
               model that does not exist

Every credential problem (missing, malformed, unknown, expired, revoked) is the same 401 with a
`WWW-Authenticate` header; a database or JWKS that cannot be reached is a 503. Nothing here
lets a request through when a check could not be made.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from stratus.request.context import RequestContext
from stratus.request.errors import APIError, model_not_found
from stratus.request.stage import Stage
from stratus.security import errors as sec
from stratus.security import keys, rbac
from stratus.security.access import AccessControl
from stratus.security.identity import ANONYMOUS, Principal
from stratus.store import StoreUnavailable

WWW_AUTHENTICATE = 'Bearer realm="stratus"'
UNAUTHENTICATED_MESSAGE = (
    "Missing or invalid credentials. Send an API key (or an OIDC token) as "
    "'Authorization: Bearer <credential>'."
)


def unauthenticated() -> APIError:
    """The one 401 for every credential problem: no hint which check failed."""
    return APIError(
        401,
        UNAUTHENTICATED_MESSAGE,
        code="invalid_api_key",
        headers={"WWW-Authenticate": WWW_AUTHENTICATE},
    )


def unavailable() -> APIError:
    return APIError(
        503,
        "Access control cannot reach its database or identity provider; the request was refused. "
        "Retry shortly.",
        code="auth_unavailable",
        headers={"Retry-After": "5"},
    )


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


class OpenAccess(Stage):
    """No access control (--no-auth, loopback only): everyone is the anonymous principal."""

    async def identify(self, ctx: RequestContext) -> None:
        ctx.principal = ANONYMOUS


OPEN_ACCESS = OpenAccess()


class IdentityStage(Stage):
    def __init__(self, access: AccessControl):
        self.access = access
        # credential digest -> its verification under way: the requests that arrive with the
        # same credential while it runs wait for it instead of each verifying it in a thread
        self._verifying: dict[str, asyncio.Future[Principal]] = {}
        self._served: Any = []  # a live view of the served model names (bind)

    def bind(self, state: Any) -> None:
        self._served = state.registry.models

    async def _principal(self, ctx: RequestContext) -> Principal:
        token = bearer(ctx.authorization)
        try:
            principal = self.access.cached(token)  # refuses a missing token
            if principal is None:
                assert token is not None
                principal = await self._verify(token)
        except sec.Unauthenticated:
            raise unauthenticated() from None
        except (sec.Unavailable, StoreUnavailable):
            raise unavailable() from None
        return principal

    async def _verify(self, token: str) -> Principal:
        """Verify `token` in a thread, once for all the requests that carry it meanwhile (when
        its cache entry expires, every request in flight with that key would otherwise verify it
        again, each in a thread of its own)."""
        digest = keys.digest(token)
        flight = self._verifying.get(digest)
        if flight is None:
            flight = asyncio.ensure_future(asyncio.to_thread(self.access.authenticate, token))
            self._verifying[digest] = flight
            flight.add_done_callback(lambda done: self._landed(digest, done))
        return await asyncio.shield(flight)

    def _landed(self, digest: str, done: asyncio.Future) -> None:
        if self._verifying.get(digest) is done:
            del self._verifying[digest]
        if not done.cancelled():
            done.exception()  # retrieved: a refusal every waiter left is not reported as lost

    async def identify(self, ctx: RequestContext) -> None:
        ctx.principal = await self._principal(ctx)  # known even if the route is refused (for the record)

    async def authorize(self, ctx: RequestContext, model: str | None) -> None:
        principal = ctx.principal
        if principal is None:
            raise unauthenticated()
        if model is None:
            try:
                self.access.check_route(principal, ctx.method, ctx.route or ctx.path)
            except sec.Forbidden as exc:
                raise APIError(403, str(exc), code="permission_denied") from None
            return
        try:
            self.access.check_model(principal, model)
        except sec.NotFound:
            raise model_not_found(model, principal.visible(list(self._served))) from None
        team = principal.team_for(model)
        if team != principal.team:  # a team's grant let it in: that team's limits and usage apply
            ctx.principal = dataclasses.replace(principal, team=team)

    async def may(self, ctx: RequestContext, permission: str) -> bool:
        if bearer(ctx.authorization) is None:
            return False
        try:
            principal = ctx.principal or await self._principal(ctx)
        except APIError:
            return False
        return rbac.has_permission(principal, permission, rbac.EVERYWHERE)
