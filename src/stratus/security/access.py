"""`AccessControl`: identify (who is calling) and the checks of authorize, as plain functions.

    access = AccessControl(Store.open(url), cache_ttl=2.0, jwt=JWTVerifier([...]))
    principal = access.cached(token) or access.authenticate(token)   # Unauthenticated, Unavailable
    access.check_route(principal, "POST", "/v1/chat/completions")     # Forbidden
    access.check_model(principal, "llama")                              # NotFound

`cached` never touches the database (microseconds); `authenticate` may, so the gateway runs it
in a worker thread. Every failure to authenticate raises the same `Unauthenticated`; a database
or JWKS that cannot be reached raises `Unavailable`, never a fallback to "allowed".
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from stratus.security import keys, rbac
from stratus.security.errors import Forbidden, NotFound, Unauthenticated, Unavailable
from stratus.security.identity import Principal
from stratus.security.jwt import JWTVerifier, claim, mapped_roles
from stratus.security.principals import build_principal, team_grants, user_principal
from stratus.store import Store, StoreUnavailable, directory
from stratus.store import apikeys as key_rows

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from stratus.store.records import ApiKey

log = logging.getLogger("stratus.security")

TOUCH_EVERY_S = 60.0  # last_used_at is written at most this often per key


class AccessControl:
    def __init__(self, store: Store, *, cache_ttl: float = 2.0, jwt: JWTVerifier | None = None):
        self.store = store
        self.cache = keys.VerificationCache(cache_ttl)
        self.jwt = jwt

    # -- identify ---------------------------------------------------------------------------------

    def cached(self, token: str | None) -> Principal | None:
        """The principal for a token verified within the cache TTL; None means "ask authenticate".

        A cached refusal raises Unauthenticated here too, without touching the database.
        """
        if not token:
            raise Unauthenticated("no credential")
        hit, principal = self.cache.get(keys.digest(token))
        if hit and principal is None:
            raise Unauthenticated("credential refused recently")
        return principal

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthenticated("no credential")
        token_digest = keys.digest(token)
        if keys.looks_like_key(token):
            principal = self._verify_key(token, token_digest)
        elif self.jwt is not None and token.count(".") == 2:
            principal = self._verify_jwt(token, token_digest)
        else:
            raise Unauthenticated("not a stratus key or a JWT")
        return principal

    def _refuse(self, token_digest: str, why: str, user: str | None = None, key_id: str | None = None):
        self.cache.put(token_digest, None, user=user, key_id=key_id)
        return Unauthenticated(why)

    def _verify_key(self, token: str, token_digest: str) -> Principal:
        lookup = keys.lookup_of(token)
        if lookup is None:
            raise Unauthenticated("malformed key")
        now = time.time()

        def check(conn: Connection) -> tuple[Principal, ApiKey, float | None]:
            # An unknown id pays the same probe and comparison as a wrong secret, so how long a
            # refusal takes does not tell an attacker which lookup ids exist.
            stored = key_rows.secret_hash(conn, lookup)
            matched = keys.matches(token_digest, stored or keys.UNKNOWN_KEY_HASH)
            if stored is None or not matched:
                raise self._refuse(token_digest, "wrong secret" if stored else "unknown key")
            found = key_rows.find_credential(conn, lookup)
            if found is None:  # revoked and deleted since the probe
                raise self._refuse(token_digest, "unknown key")
            secret, key, user = found
            ends = [t for t in (key.expires_at, secret.expires_at) if t is not None]
            expires_at = min(ends) if ends else None
            if key.revoked_at is not None or (expires_at is not None and expires_at <= now):
                raise self._refuse(token_digest, "revoked or expired key", user.name, key.id)
            if user.disabled:
                raise self._refuse(token_digest, "owner disabled", user.name, key.id)
            memberships = directory.memberships_of(conn, user.id)
            if key.team is not None and user.role != rbac.ADMIN and key.team not in memberships:
                raise self._refuse(token_digest, "owner left the key's team", user.name, key.id)
            principal = user_principal(
                conn,
                user,
                key,
                key_prefix=keys.display_prefix(lookup),
                expires_at=expires_at,
                memberships=memberships,
            )
            return principal, key, expires_at

        try:
            principal, key, expires_at = self.store.read(check)  # tried again if its connection drops
        except StoreUnavailable as exc:
            raise Unavailable(str(exc)) from None
        if key.last_used_at is None or now - key.last_used_at > TOUCH_EVERY_S:
            self._touch(key.id, now)
        ttl = None if expires_at is None else expires_at - now
        self.cache.put(token_digest, principal, ttl)
        return principal

    def _touch(self, key_id: str, now: float) -> None:
        try:
            with self.store.begin() as conn:
                key_rows.touch_key(conn, key_id, now)
        except StoreUnavailable:
            log.warning("could not record last use of key %s", key_id)

    def _verify_jwt(self, token: str, token_digest: str) -> Principal:
        assert self.jwt is not None
        claims, issuer = self.jwt.verify(token)  # Unauthenticated; Unavailable without a JWKS
        roles, teams = mapped_roles(claims, issuer)
        try:
            with self.store.connect() as conn:
                grants = team_grants(conn, teams)
        except StoreUnavailable as exc:
            raise Unavailable(str(exc)) from None
        expires_at = float(claims["exp"])
        principal = build_principal(
            # Namespaced: a token whose subject is "admin" is not the stored user "admin", and
            # two issuers' subjects never meet (usage, limits and the audit trail key on it).
            user=f"oidc:{issuer.issuer}:{claim(claims, issuer.user_claim)}",
            roles=roles,
            memberships=teams,
            team=next(iter(teams)) if len(teams) == 1 else None,
            team_models=grants,
            expires_at=expires_at,
            via="jwt",
        )
        self.cache.put(token_digest, principal, expires_at - time.time())
        return principal

    # -- authorize --------------------------------------------------------------------------------

    @staticmethod
    def check_route(principal: Principal, method: str, path: str) -> None:
        permission = rbac.route_permission(method, path)
        if permission is None:  # a route nobody declared is refused, never opened
            raise Forbidden(f"The route {method} {path} has no declared permission.")
        rbac.authorize(principal, permission, scope=None)

    @staticmethod
    def check_model(principal: Principal, model: str) -> None:
        """Refuse a model the principal may not use exactly as one that does not exist."""
        if not (rbac.has_permission(principal, rbac.MODELS_USE, None) and principal.can_use(model)):
            raise NotFound(model, field="model")

    def forget_key(self, key_id: str) -> None:
        """Drop a key's cached verifications here at once (after a revocation or rotation)."""
        self.cache.invalidate_key(key_id)

    def forget_user(self, user: str) -> None:
        """Drop a user's cached credentials here at once (disabled, demoted, moved between teams);
        other gateways follow within the cache TTL."""
        self.cache.invalidate_user(user)
