"""OIDC bearer tokens: key pairs made here, a JWKS served on loopback, and every way a token can
be wrong (tampered, expired, early, wrong audience or issuer, alg none, HS/RS confusion, a key of
the wrong type, an unknown key id)."""

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from stratus.security import admin
from stratus.security.access import AccessControl
from stratus.security.bootstrap import bootstrap
from stratus.security.errors import Unauthenticated, Unavailable
from stratus.security.jwt import IssuerConfig, JWKSource, JWTVerifier, parse_role_map
from stratus.store import Store
from tests import issued

ISSUER = "https://login.example.test/realms/acme"
AUDIENCE = "stratus"
ROLE_MAP = "stratus-admins=admin,ml-devs=member:ml,ml-leads=team_admin:ml,watchers=viewer"


def _jwk(public_key, kid, alg, algorithm):
    jwk = algorithm.to_jwk(public_key, as_dict=True)
    jwk.update(kid=kid, alg=alg, use="sig")
    return jwk


@pytest.fixture(scope="module")
def keypairs():
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # not in the JWKS
    return {
        "RS256": (rsa_key, "rsa-1", _jwk(rsa_key.public_key(), "rsa-1", "RS256", RSAAlgorithm)),
        "ES256": (ec_key, "ec-1", _jwk(ec_key.public_key(), "ec-1", "ES256", ECAlgorithm)),
        "EdDSA": (ed_key, "ed-1", _jwk(ed_key.public_key(), "ed-1", "EdDSA", OKPAlgorithm)),
        "other": other,
    }


class JWKSServer:
    """A JWKS document on a loopback port; `keys` can change while it runs; `fetches` counts GETs."""

    def __init__(self, keys):
        self.keys = list(keys)
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.fetches += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/certs"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def jwks(keypairs):
    server = JWKSServer(keypairs[a][2] for a in ("RS256", "ES256", "EdDSA"))
    yield server
    server.close()


def issuer_config(jwks_location, **over):
    fields = dict(issuer=ISSUER, audience=AUDIENCE, jwks=jwks_location, role_map=parse_role_map(ROLE_MAP))
    fields.update(over)
    return IssuerConfig(**fields)


@pytest.fixture
def verifier(jwks):
    return JWTVerifier([issuer_config(jwks.url)])


def claims(**over):
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "groups": ["ml-devs"],
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def token(keypairs, alg="RS256", kid=None, **claim_over):
    key, default_kid, _ = keypairs[alg]
    return pyjwt.encode(claims(**claim_over), key, algorithm=alg, headers={"kid": kid or default_kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_valid_tokens_of_each_algorithm(verifier, keypairs, alg):
    got, issuer = verifier.verify(token(keypairs, alg))
    assert got["sub"] == "alice" and issuer.issuer == ISSUER


def test_tampered_token(verifier, keypairs):
    header, payload, signature = token(keypairs).split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=="))
    body["groups"] = ["stratus-admins"]
    forged = ".".join([header, _b64(json.dumps(body).encode()), signature])
    with pytest.raises(Unauthenticated):
        verifier.verify(forged)
    with pytest.raises(Unauthenticated):  # a signature flipped in its last character
        verifier.verify(
            ".".join(
                [header, payload, signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]]
            )
        )


def test_expiry_and_not_before_with_leeway(verifier, keypairs):
    now = int(time.time())
    with pytest.raises(Unauthenticated, match="ExpiredSignature"):
        verifier.verify(token(keypairs, exp=now - 120))
    verifier.verify(token(keypairs, exp=now - 10))  # within the 30 s leeway
    with pytest.raises(Unauthenticated, match="ImmatureSignature"):
        verifier.verify(token(keypairs, nbf=now + 120))
    with pytest.raises(Unauthenticated, match="MissingRequiredClaim"):
        verifier.verify(token(keypairs, exp=None))


def test_wrong_audience_or_issuer(verifier, keypairs):
    with pytest.raises(Unauthenticated, match="InvalidAudience"):
        verifier.verify(token(keypairs, aud="someone-else"))
    with pytest.raises(Unauthenticated, match="unknown issuer"):
        verifier.verify(token(keypairs, iss="https://evil.example.test"))
    other = pyjwt.encode(claims(), keypairs["other"], algorithm="RS256", headers={"kid": "rsa-1"})
    with pytest.raises(Unauthenticated, match="InvalidSignature"):  # right kid, wrong key
        verifier.verify(other)


def test_alg_none_is_refused(verifier):
    unsigned = _b64(b'{"alg":"none","typ":"JWT"}') + "." + _b64(json.dumps(claims()).encode()) + "."
    with pytest.raises(Unauthenticated, match="algorithm not allowed"):
        verifier.verify(unsigned)


def test_hs256_signed_with_the_public_key_is_refused(verifier, keypairs):
    """The HS/RS confusion: an HMAC over the token with the issuer's public key as the secret."""
    public_pem = (
        keypairs["RS256"][0]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    signing_input = (
        _b64(b'{"alg":"HS256","typ":"JWT","kid":"rsa-1"}') + "." + _b64(json.dumps(claims()).encode())
    )
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(Unauthenticated, match="algorithm not allowed"):
        verifier.verify(signing_input + "." + _b64(mac))


def test_key_type_must_fit_the_algorithm(verifier, keypairs):
    # An ES256 token that names the RSA key's kid: no key of the right type.
    mixed = pyjwt.encode(claims(), keypairs["ES256"][0], algorithm="ES256", headers={"kid": "rsa-1"})
    with pytest.raises(Unauthenticated, match="no key"):
        verifier.verify(mixed)


def test_unknown_kid_refetches_the_jwks_once(jwks, keypairs, monkeypatch):
    monkeypatch.setattr(JWKSource, "MIN_REFETCH_S", 0.0)
    verifier = JWTVerifier([issuer_config(jwks.url)])
    verifier.verify(token(keypairs))
    before = jwks.fetches
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rotated = pyjwt.encode(claims(), new_key, algorithm="RS256", headers={"kid": "rsa-2"})
    with pytest.raises(Unauthenticated):
        verifier.verify(rotated)  # not published yet
    assert jwks.fetches == before + 1
    jwks.keys.append(_jwk(new_key.public_key(), "rsa-2", "RS256", RSAAlgorithm))
    try:
        verifier.verify(rotated)  # the issuer rotated its key: picked up on the next unknown kid
    finally:
        jwks.keys.pop()


def test_jwks_from_a_file(tmp_path, keypairs):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [keypairs["EdDSA"][2]]}))
    verifier = JWTVerifier([issuer_config(str(path))])
    verifier.verify(token(keypairs, "EdDSA"))
    with pytest.raises(Unauthenticated):
        verifier.verify(token(keypairs, "RS256"))


def test_configuration_refuses_unsafe_choices(tmp_path):
    with pytest.raises(ValueError, match="not allowed"):
        issuer_config("https://x.test/certs", algorithms=("HS256",))
    with pytest.raises(ValueError, match="not allowed"):
        issuer_config("https://x.test/certs", algorithms=("none",))
    with pytest.raises(ValueError, match="must use https"):
        JWKSource("http://login.example.test/certs")
    with pytest.raises(ValueError, match="role spec"):
        parse_role_map("admins=superuser")


def test_unreachable_jwks_is_unavailable_not_open(keypairs):
    verifier = JWTVerifier([issuer_config("http://127.0.0.1:1/certs")])
    with pytest.raises(Unavailable):
        verifier.verify(token(keypairs))


def test_claims_map_to_roles_teams_and_the_teams_grants(tmp_path, jwks, keypairs):
    store = Store.open(f"sqlite:///{issued.data_dir_of(tmp_path) / 'stratus.db'}")
    access = AccessControl(store, jwt=JWTVerifier([issuer_config(jwks.url)]))
    root = access.authenticate(issued.record(bootstrap(store).generated_secret))
    admin.create_team(access, root, "ml")
    admin.set_team_grant(access, root, "ml", "llama", True)

    dev = access.authenticate(token(keypairs, groups=["ml-devs", "unmapped"]))
    assert (dev.user, dev.via, dev.team, dev.roles, dev.models) == (
        f"oidc:{ISSUER}:alice",
        "jwt",
        "ml",
        {"member"},
        {"llama"},
    )
    lead = access.authenticate(token(keypairs, sub="bob", groups=["ml-leads"]))
    assert lead.admin_of == {"ml"} and "team_admin" in lead.roles
    boss = access.authenticate(token(keypairs, sub="carol", groups=["stratus-admins"]))
    assert boss.roles == {"admin"} and boss.models is None
    nobody = access.authenticate(token(keypairs, sub="dave", groups=[]))
    assert nobody.roles == frozenset() and nobody.models == frozenset()
    assert dev.expires_at is not None  # a key it creates may not outlive the token
    store.close()


def test_a_token_subject_is_not_a_stored_user(tmp_path, jwks, keypairs):
    """A token with sub "admin" is a principal of its issuer, never the stored user "admin": its
    usage, limits and audit records are its own."""
    store = Store.open(f"sqlite:///{issued.data_dir_of(tmp_path) / 'stratus.db'}")
    access = AccessControl(store, jwt=JWTVerifier([issuer_config(jwks.url)]))
    stored_admin = access.authenticate(issued.record(bootstrap(store).generated_secret))
    assert stored_admin.user == "admin"
    impostor = access.authenticate(token(keypairs, sub="admin", groups=[]))
    assert impostor.user == f"oidc:{ISSUER}:admin" and impostor.user != stored_admin.user
    assert impostor.roles != stored_admin.roles
