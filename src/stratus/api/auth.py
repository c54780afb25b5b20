"""Access control at the gateway: the identify and authorize hooks, and what a failure looks like.

    hooks = AuthHooks(build_access(settings))       # what `stratus serve` does unless --no-auth
    app = create_app(settings, hooks=hooks)

identify   the bearer credential -> Principal (security/access.py; cached a few seconds, else
           looked up in a worker thread), then the route's declared permission (security/rbac.py)
authorize  the model named by the request: one the caller may not use gets exactly the 404 of
           a model that does not exist

Every credential problem (missing, malformed, unknown, expired, revoked) is the same 401 with a
`WWW-Authenticate` header; a database or JWKS that cannot be reached is a 503. Nothing here
lets a request through when a check could not be made.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from starlette.responses import Response

from stratus.api.errors import APIError
from stratus.api.pipeline import OPEN_ACCESS, RequestContext, RequestHooks
from stratus.api.registry import model_not_found
from stratus.audit import guard
from stratus.audit.anomaly import Guard
from stratus.audit.guard import Review, guard_for
from stratus.audit.recorder import AuditRecorder, recorder_for
from stratus.audit.suspension import Suspensions
from stratus.audit.webhook import AlertWebhook
from stratus.security import errors as sec
from stratus.security import rbac
from stratus.security.access import AccessControl
from stratus.security.bootstrap import ENV_VAR, bootstrap
from stratus.security.identity import Principal
from stratus.security.jwt import IssuerConfig, JWTVerifier, parse_role_map
from stratus.security.secrets import SecretStore
from stratus.store import Store, StoreUnavailable, database_url

if TYPE_CHECKING:
    from stratus.api.state import AppState
    from stratus.config import Settings

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


class AuthHooks(RequestHooks):
    def __init__(self, access: AccessControl):
        self.access = access
        self._served: list[str] | dict = []
        self.audit: AuditRecorder | None = None
        self.anomaly: Guard | None = None
        self.review = Review()  # after an alert: webhook, suspension (audit/guard.py)

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()

    def bind(self, state: AppState) -> None:
        self._served = state.registry.models  # a live view: names of the served models
        settings = state.settings
        store = self.access.store
        self.audit = audit = recorder_for(settings, store)  # step 8 (audit/recorder.py)
        self.anomaly = guard_for(settings)  # step 2 (audit/guard.py)
        ttl = settings.auth_cache_ttl
        self.review = Review(
            suspensions=Suspensions(store, ttl=ttl),
            webhook=AlertWebhook(lambda: SecretStore(store, audit.content.ring), ttl=ttl),
            suspend=settings.alert_suspend,
        )

    async def record(self, ctx: RequestContext) -> None:
        if self.audit is not None:
            await self.audit.record(ctx)
        if self.anomaly is not None:
            await guard.observe(self.anomaly, self.audit, ctx, self.review)

    async def _principal(self, request: Request) -> Principal:
        token = bearer(request.headers.get("authorization"))
        try:
            principal = self.access.cached(token)
            if principal is None:
                principal = await asyncio.to_thread(self.access.authenticate, token)
        except sec.Unauthenticated:
            raise unauthenticated() from None
        except (sec.Unavailable, StoreUnavailable):
            raise unavailable() from None
        return principal

    async def identify(self, request: Request, ctx: RequestContext) -> Principal:
        if self.anomaly is not None:
            guard.check(self.anomaly, ctx)  # a locked-out address or key prefix: 429
        principal = await self._principal(request)
        ctx.principal = principal  # known even if the route is refused (for the record step)
        if self.review.suspensions is not None:
            try:
                await guard.check_suspended(self.review.suspensions, principal)  # 403 while suspended
            except StoreUnavailable:
                raise unavailable() from None
        route = request.scope.get("route")
        try:
            self.access.check_route(principal, request.method, getattr(route, "path", request.url.path))
        except sec.Forbidden as exc:
            raise APIError(403, str(exc), code="permission_denied") from None
        return principal

    async def authorize(self, ctx: RequestContext, model: str | None) -> None:
        if model is None:
            return
        principal = ctx.principal
        if principal is None:
            raise unauthenticated()
        try:
            self.access.check_model(principal, model)
        except sec.NotFound:
            raise model_not_found(model, principal.visible(list(self._served))) from None

    async def may(self, request: Request, ctx: RequestContext, permission: str) -> bool:
        if bearer(request.headers.get("authorization")) is None:
            return False
        try:
            principal = ctx.principal or await self._principal(request)
        except APIError:
            return False
        return rbac.has_permission(principal, permission, rbac.EVERYWHERE)


# -- building it from settings --------------------------------------------------------------------


def jwt_verifier(settings: Settings) -> JWTVerifier | None:
    if not settings.jwt_issuer:
        return None
    issuer = IssuerConfig(
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience or "",
        jwks=settings.jwt_jwks or "",
        algorithms=tuple(a.strip() for a in settings.jwt_algorithms.split(",") if a.strip()),
        leeway=settings.jwt_leeway,
        user_claim=settings.jwt_user_claim,
        roles_claim=settings.jwt_roles_claim,
        role_map=parse_role_map(settings.jwt_role_map),
        team_claim=settings.jwt_team_claim,
    )
    return JWTVerifier([issuer])


def build_access(settings: Settings) -> AccessControl:
    """Open (and migrate) the store named by the settings; the JWT issuer if one is set."""
    store = Store.open(database_url(settings.data_dir, settings.database_url))
    return AccessControl(store, cache_ttl=settings.auth_cache_ttl, jwt=jwt_verifier(settings))


def default_hooks(settings: Settings) -> RequestHooks:
    """What `create_app` uses when given no hooks: access control unless settings.auth is off.

    A fresh store gets its first admin from STRATUS_ADMIN_KEY here; without it the store stays
    empty (and shut) until `stratus serve` bootstraps it and prints the key.
    """
    if not settings.auth:
        return OPEN_ACCESS
    access = build_access(settings)
    if os.environ.get(ENV_VAR):
        bootstrap(access.store, os.environ[ENV_VAR])
    return AuthHooks(access)


# -- errors and the OpenAPI document --------------------------------------------------------------

_STATUS = {
    sec.Unauthenticated: 401,
    sec.Forbidden: 403,
    sec.NotFound: 404,
    sec.Invalid: 400,
    sec.Conflict: 409,
    sec.Unavailable: 503,
}
_CODES = {403: "permission_denied", 404: "not_found", 409: "conflict"}


def to_api_error(exc: sec.SecurityError) -> APIError:
    status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 500)
    if status == 401:
        return unauthenticated()
    if status == 503:
        return unavailable()
    return APIError(status, str(exc), param=getattr(exc, "field", None), code=_CODES.get(status))


async def _security_error(request: Request, exc: sec.SecurityError) -> Response:
    return to_api_error(exc).response()


async def _store_unavailable(request: Request, exc: StoreUnavailable) -> Response:
    return unavailable().response()


def install(app: FastAPI) -> None:
    """Error handlers for security errors, and bearer auth in the OpenAPI document."""
    app.add_exception_handler(sec.SecurityError, _security_error)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)


_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
_AUTH_RESPONSES = {
    "401": {
        "description": "Missing, malformed, unknown, expired or revoked credential",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        "content": {"application/json": {"schema": _ERROR_REF}},
    },
    "403": {
        "description": "The credential's role does not allow this",
        "content": {"application/json": {"schema": _ERROR_REF}},
    },
    "503": {
        "description": "Access control cannot reach its database; see Retry-After",
        "headers": {"Retry-After": {"schema": {"type": "string"}}},
        "content": {"application/json": {"schema": _ERROR_REF}},
    },
}


def document_auth(schema: dict) -> dict:
    """Bearer auth on every operation that needs a credential, with its permission and errors."""
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (sk-stratus-...) or an OIDC token from a configured issuer.",
    }
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            permission = rbac.route_permission(method.upper(), path)
            if permission is None:
                permission = _path_param_form(method.upper(), path)
            if permission in (None, rbac.PUBLIC):
                continue
            op["security"] = [{"bearer": []}]
            op["x-stratus-permission"] = permission
            responses = op.setdefault("responses", {})
            for code, response in _AUTH_RESPONSES.items():
                responses.setdefault(code, response)
    return schema


def _path_param_form(method: str, path: str) -> str | None:
    """OpenAPI writes {model_id} where the route template says {model_id:path}."""
    for (m, template), permission in rbac.ROUTE_PERMISSIONS.items():
        if m == method and template.replace(":path}", "}") == path:
            return permission
    return None
