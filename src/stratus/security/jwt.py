"""Bearer JWTs from OIDC issuers: verify the signature against the issuer's JWKS, check the claims,
and map them to roles and teams.

    issuer = IssuerConfig(
        issuer="https://login.example.com/realms/acme",
        audience="stratus",
        jwks="https://login.example.com/realms/acme/protocol/openid-connect/certs",  # or a file
        role_map=parse_role_map("stratus-admins=admin,ml=member:ml,ml-leads=team_admin:ml"),
    )
    claims, issuer = JWTVerifier([issuer]).verify(token)

Only asymmetric algorithms are accepted (RS256, ES256, EdDSA by default): `alg: none` and every
HS* algorithm are refused before any key is looked at, so a public key can never be used as an
HMAC secret (the HS/RS confusion). The key must come from the issuer's JWKS, its type must match
the algorithm, and `iss`, `aud`, `exp` (required) and `nbf` are checked with a small leeway.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import jwt as pyjwt
from jwt.algorithms import get_default_algorithms

from stratus.net.urls import is_loopback
from stratus.security.errors import Unauthenticated, Unavailable
from stratus.security.rbac import GLOBAL_ROLES, TEAM_ROLES

SAFE_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"})
DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
_KEY_TYPE = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_EC_CURVE = {"ES256": "P-256", "ES384": "P-384"}
MAX_TOKEN_BYTES = 16 * 1024


@dataclass(frozen=True)
class IssuerConfig:
    issuer: str
    audience: str
    jwks: str  # https URL (http only on loopback), or a JSON file with {"keys": [...]}
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway: float = 30.0
    user_claim: str = "sub"
    roles_claim: str = "groups"  # a list of strings; a dotted path reaches nested claims
    role_map: Mapping[str, str] = field(default_factory=dict)  # claim value -> role spec
    team_claim: str | None = None  # a claim naming one team the caller is a member of
    jwks_refresh: float = 300.0

    def __post_init__(self):
        bad = [a for a in self.algorithms if a not in SAFE_ALGORITHMS]
        if bad or not self.algorithms:
            raise ValueError(
                f"JWT algorithms {bad or '(none)'} are not allowed; use asymmetric ones from "
                f"{sorted(SAFE_ALGORITHMS)}"
            )
        if not self.issuer or not self.audience or not self.jwks:
            raise ValueError("a JWT issuer needs an issuer, an audience and a JWKS (URL or file)")
        for spec in self.role_map.values():
            parse_role_spec(spec)


def parse_role_spec(spec: str) -> tuple[str, str | None]:
    """'admin' -> ('admin', None); 'team_admin:ml' -> ('team_admin', 'ml')."""
    role, _, team = spec.partition(":")
    if team:
        if role not in TEAM_ROLES:
            raise ValueError(f"role spec {spec!r}: a team role is one of {', '.join(TEAM_ROLES)}")
        return role, team
    if role not in GLOBAL_ROLES:
        raise ValueError(
            f"role spec {spec!r}: use one of {', '.join(GLOBAL_ROLES)}, or team_admin:TEAM / member:TEAM"
        )
    return role, None


def parse_role_map(text: str | None) -> dict[str, str]:
    """'groupA=admin,groupB=member:ml' -> {'groupA': 'admin', 'groupB': 'member:ml'}."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        claim, sep, spec = item.rpartition("=")
        if not sep or not claim.strip():
            raise ValueError(f"JWT role map entry {item!r}: expected CLAIM_VALUE=ROLE")
        parse_role_spec(spec.strip())
        out[claim.strip()] = spec.strip()
    return out


class JWKSource:
    """An issuer's signing keys, from a URL (re-fetched periodically and on an unknown kid) or a file."""

    MIN_REFETCH_S = 10.0

    def __init__(self, location: str, refresh: float = 300.0):
        self.location = location
        self.refresh = refresh
        self.is_url = location.startswith(("https://", "http://"))
        if self.is_url:
            parsed = urlparse(location)
            if parsed.scheme != "https" and not is_loopback(parsed.hostname):
                raise ValueError(f"JWKS URL {location} must use https (plain http only on loopback)")
        elif not Path(location).is_file():
            raise ValueError(f"JWKS file {location} does not exist")
        self._keys: list[dict] = []
        self._fetched = 0.0
        self._lock = threading.Lock()

    def _load(self) -> list[dict]:
        if self.is_url:
            try:
                r = httpx.get(self.location, timeout=5.0, follow_redirects=False)
                r.raise_for_status()
                data = r.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise Unavailable(f"cannot fetch the JWKS ({type(exc).__name__})") from None
        else:
            try:
                data = json.loads(Path(self.location).read_text())
            except (OSError, ValueError) as exc:
                raise Unavailable(f"cannot read the JWKS file ({type(exc).__name__})") from None
        keys = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(keys, list):
            raise Unavailable("the JWKS has no 'keys' list")
        return [k for k in keys if isinstance(k, dict)]

    def keys(self, want_kid: str | None) -> list[dict]:
        with self._lock:
            now = time.monotonic()
            stale = now - self._fetched > self.refresh
            unknown = want_kid is not None and not any(k.get("kid") == want_kid for k in self._keys)
            if not self._keys or stale or (unknown and now - self._fetched > self.MIN_REFETCH_S):
                try:
                    self._keys = self._load()
                    self._fetched = now
                except Unavailable:
                    if not self._keys:
                        raise
            return list(self._keys)


def _matching_key(jwks: list[dict], kid: str | None, alg: str):
    """The public key for this kid and algorithm; its type must fit the algorithm."""
    candidates = [k for k in jwks if kid is None or k.get("kid") == kid]
    if kid is None and len(candidates) != 1:
        raise Unauthenticated("token without kid, and the JWKS has several keys")
    for jwk in candidates:
        if jwk.get("use", "sig") != "sig" or jwk.get("alg", alg) != alg:
            continue
        if jwk.get("kty") != _KEY_TYPE[alg[:2]]:
            continue
        if alg in _EC_CURVE and jwk.get("crv") != _EC_CURVE[alg]:
            continue
        if "d" in jwk or "k" in jwk:  # a private or symmetric key has no place in a JWKS
            continue
        try:
            return pyjwt.PyJWK(jwk, algorithm=alg).key
        except (pyjwt.PyJWKError, pyjwt.InvalidKeyError, ValueError):
            continue
    raise Unauthenticated("no key in the issuer's JWKS fits this token")


def claim(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


class JWTVerifier:
    def __init__(self, issuers: list[IssuerConfig]):
        self.issuers = {i.issuer: i for i in issuers}
        self.sources = {i.issuer: JWKSource(i.jwks, i.jwks_refresh) for i in issuers}
        available = get_default_algorithms()
        missing = {a for i in issuers for a in i.algorithms if a not in available}
        if missing:
            raise ValueError(f"JWT algorithms {sorted(missing)} need the cryptography package")

    def verify(self, token: str) -> tuple[dict[str, Any], IssuerConfig]:
        """The verified claims and their issuer, or Unauthenticated (Unavailable if no JWKS)."""
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("token too large")
        try:
            header = pyjwt.get_unverified_header(token)
            unverified = pyjwt.decode(token, options={"verify_signature": False})
        except pyjwt.PyJWTError:
            raise Unauthenticated("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in SAFE_ALGORITHMS:
            raise Unauthenticated("token algorithm not allowed")  # none, HS*, anything unknown
        issuer = self.issuers.get(unverified.get("iss")) if isinstance(unverified.get("iss"), str) else None
        if issuer is None or alg not in issuer.algorithms:
            raise Unauthenticated("unknown issuer or algorithm")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("bad kid")
        key = _matching_key(self.sources[issuer.issuer].keys(kid), kid, alg)
        try:
            claims = pyjwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=issuer.audience,
                issuer=issuer.issuer,
                leeway=issuer.leeway,
                options={"require": ["exp", "iss", "aud"], "verify_signature": True},
            )
        except pyjwt.PyJWTError as exc:
            raise Unauthenticated(f"token rejected: {type(exc).__name__}") from None
        user = claim(claims, issuer.user_claim)
        if not isinstance(user, str) or not user or len(user) > 128:
            raise Unauthenticated(f"token has no usable '{issuer.user_claim}' claim")
        return claims, issuer


def mapped_roles(claims: Mapping[str, Any], issuer: IssuerConfig) -> tuple[set[str], dict[str, str]]:
    """(global roles, {team: team role}) that the claims map to."""
    values = claim(claims, issuer.roles_claim)
    if isinstance(values, str):
        values = values.split()
    if not isinstance(values, list):
        values = []
    roles: set[str] = set()
    teams: dict[str, str] = {}
    for value in values:
        spec = issuer.role_map.get(value) if isinstance(value, str) else None
        if spec is None:
            continue
        role, team = parse_role_spec(spec)
        if team is None:
            roles.add(role)
        elif teams.get(team) != "team_admin":
            teams[team] = role
    if issuer.team_claim:
        team = claim(claims, issuer.team_claim)
        if isinstance(team, str) and team and team not in teams:
            teams[team] = "member"
    return roles, teams
