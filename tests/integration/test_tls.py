"""`stratus serve` with --tls-cert/--tls-key answers over HTTPS."""

import shutil
import ssl
import subprocess
import threading

import httpx
import pytest

from stratus.cli.serve import build_server
from stratus.config import Settings
from tests.conftest import TINY_MODEL

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]


def self_signed(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https(tmp_path, tiny_checkpoint):
    cert, key = self_signed(tmp_path)
    settings = Settings(
        models={TINY_MODEL: str(tiny_checkpoint)},
        port=0,
        tls_cert=str(cert),
        tls_key=str(key),
        data_dir=str(tmp_path / "data"),
        engine_isolation="thread",
        log_level="warning",
        auth=False,  # loopback, and not about access control
    )
    server, sock = build_server(settings)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{sock.getsockname()[1]}"
    try:
        with httpx.Client(
            base_url=url, verify=ssl.create_default_context(cafile=str(cert)), timeout=60
        ) as client:
            deadline_error = None
            for _ in range(600):
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError as exc:
                    deadline_error = exc
                threading.Event().wait(0.1)
            else:
                raise AssertionError(f"never ready over HTTPS: {deadline_error}")
            r = client.post("/v1/completions", json={"model": TINY_MODEL, "prompt": "tls", "max_tokens": 2})
            assert r.status_code == 200
        with pytest.raises(httpx.TransportError):  # plain HTTP on the TLS port is not served
            httpx.get(url.replace("https", "http") + "/health", timeout=5)
    finally:
        server.should_exit = True
        thread.join(30)


class _Serving:
    """build_server in a thread, like `stratus serve`; stops on exit."""

    def __init__(self, settings):
        self.server, sock = build_server(settings)
        self.url = f"https://127.0.0.1:{sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def _health(url: str, **client_args) -> httpx.Response:
    error = None
    for _ in range(300):
        try:
            return httpx.get(url + "/health", timeout=5, **client_args)
        except httpx.ConnectError as exc:  # not listening yet, or the handshake was refused
            error = exc
            if "CERTIFICATE" in str(exc).upper() or "ALERT" in str(exc).upper():
                raise
        threading.Event().wait(0.1)
    raise AssertionError(f"no answer: {error}")


def _tls_settings(tmp_path, tiny_checkpoint, **extra):
    return Settings(
        models={TINY_MODEL: str(tiny_checkpoint)},
        port=0,
        data_dir=str(tmp_path / "data"),
        engine_isolation="thread",
        log_level="warning",
        auth=False,
        tls_self_signed=True,
        **extra,
    )


def test_self_signed_certificate_pinned_by_the_client_with_hsts(tmp_path, tiny_checkpoint):
    with _Serving(_tls_settings(tmp_path, tiny_checkpoint)) as serving:
        cert = tmp_path / "data" / "tls" / "cert.pem"
        assert (tmp_path / "data" / "tls" / "key.pem").stat().st_mode & 0o077 == 0
        r = _health(serving.url, verify=ssl.create_default_context(cafile=str(cert)))
        assert r.status_code == 200
        assert r.headers["strict-transport-security"].startswith("max-age=")
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'self'" in r.headers["content-security-policy"]
        with pytest.raises(httpx.ConnectError):  # not pinned: the system CAs do not know it
            httpx.get(serving.url + "/health", timeout=5)


def test_mutual_tls_refuses_a_client_without_a_certificate(tmp_path, tiny_checkpoint):
    from stratus.net.tls import issue

    ca_cert, ca_key = issue("test client CA", [], is_ca=True)
    (tmp_path / "ca.pem").write_bytes(ca_cert)
    client_cert, client_key = issue("worker-1", [], ca=(ca_cert, ca_key), client=True)
    (tmp_path / "client.pem").write_bytes(client_cert)
    (tmp_path / "client.key").write_bytes(client_key)
    settings = _tls_settings(tmp_path, tiny_checkpoint, tls_client_ca=str(tmp_path / "ca.pem"))
    with _Serving(settings) as serving:
        pinned = ssl.create_default_context(cafile=str(tmp_path / "data" / "tls" / "cert.pem"))
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            _health(serving.url, verify=pinned)
        with_cert = ssl.create_default_context(cafile=str(tmp_path / "data" / "tls" / "cert.pem"))
        with_cert.load_cert_chain(str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
        assert _health(serving.url, verify=with_cert).status_code == 200
