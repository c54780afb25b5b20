"""TLS helpers: a development certificate, the uvicorn options for HTTPS and client certificates.

    cert, key = ensure_self_signed("data", ["127.0.0.1", "localhost"])   # data/tls/{cert,key}.pem
    pem_cert, pem_key = issue("worker-1", [], ca=(ca_cert_pem, ca_key_pem), client=True)

`--tls-self-signed` makes (once, then reuses) an ECDSA P-256 certificate valid for the served
host names for 90 days; clients pin it (`curl --cacert data/tls/cert.pem`). `--tls-client-ca`
makes the server demand a client certificate signed by that CA (mutual TLS, meant for
gateway-to-worker traffic); a client without one fails the handshake.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 90
TLS_DIR = "tls"


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def issue(
    common_name: str,
    hosts: list[str],
    ca: tuple[bytes, bytes] | None = None,
    *,
    is_ca: bool = False,
    client: bool = False,
    days: int = VALID_DAYS,
) -> tuple[bytes, bytes]:
    """A certificate and its private key (PEM), self-signed or signed by `ca` (cert, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    if ca is not None:
        ca_cert = x509.load_pem_x509_certificate(ca[0])
        ca_key = serialization.load_pem_private_key(ca[1], password=None)
        issuer = ca_cert.subject
    else:
        ca_key, issuer = key, subject
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def ensure_self_signed(data_dir: str | os.PathLike, hosts: list[str]) -> tuple[Path, Path]:
    """data_dir/tls/cert.pem and key.pem: reused while valid for a week more and for `hosts`."""
    folder = Path(data_dir) / TLS_DIR
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    if cert_path.exists() and key_path.exists() and _still_good(cert_path, hosts):
        return cert_path, key_path
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = issue("stratus development certificate", hosts)
    _write_private(key_path, key)
    cert_path.write_bytes(cert)
    return cert_path, key_path


def _still_good(cert_path: Path, hosts: list[str]) -> bool:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    if cert.not_valid_after_utc < dt.datetime.now(dt.UTC) + dt.timedelta(days=7):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(
        san.get_values_for_type(x509.DNSName)
    )
    return set(hosts) <= have


def self_signed_hosts(host: str) -> list[str]:
    hosts = ["127.0.0.1", "localhost"]
    if host not in ("0.0.0.0", "::", "") and host not in hosts:
        hosts.append(host)
    return hosts


def uvicorn_options(cert: str | None, key: str | None, client_ca: str | None) -> dict:
    """Keyword arguments for uvicorn.Config: HTTPS, and mutual TLS when a client CA is given."""
    options: dict = {"ssl_certfile": cert, "ssl_keyfile": key}
    if client_ca:
        options["ssl_ca_certs"] = client_ca
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options
