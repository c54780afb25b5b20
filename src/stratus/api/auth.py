"""Access control at the gateway: built from settings, its errors as responses, and bearer
auth in the OpenAPI document. The checks themselves are security/stage.py's IdentityStage.

    identity = IdentityStage(build_access(settings))   # what `stratus serve` does unless --no-auth
    app = create_app(settings, identity=identity)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from starlette.responses import Response

from stratus.request.errors import APIError
from stratus.request.stage import Stage
from stratus.security import errors as sec
from stratus.security import rbac
from stratus.security.access import AccessControl
from stratus.security.bootstrap import ENV_VAR, bootstrap
from stratus.security.jwt import IssuerConfig, JWTVerifier, parse_role_map
from stratus.security.stage import OPEN_ACCESS, IdentityStage, unauthenticated, unavailable
from stratus.store import Store, StoreUnavailable, database_url

if TYPE_CHECKING:
    from stratus.config import Settings

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


def default_identity(settings: Settings) -> Stage:
    """What `create_app` uses when given no identity stage: access control unless settings.auth
    is off.

    A fresh store gets its first admin from STRATUS_ADMIN_KEY here; without it the store stays
    empty (and shut) until `stratus serve` bootstraps it and prints the key.
    """
    if not settings.auth:
        return OPEN_ACCESS
    access = build_access(settings)
    if os.environ.get(ENV_VAR):
        bootstrap(access.store, os.environ[ENV_VAR])
    return IdentityStage(access)


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
    "429": {  # the screen step (audit/guard.py): before the credential is even checked
        "description": "Too many failed authentication attempts from this address or against this "
        "key (locked out), or a limit reached; see Retry-After",
        "headers": {"Retry-After": {"schema": {"type": "string"}}},
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
