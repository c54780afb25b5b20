"""`stratus serve` with --tls-cert/--tls-key answers over HTTPS."""

import shutil
import ssl
import subprocess
import threading

import httpx
import pytest

from stratus.cli import build_server
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
        with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(cert)), timeout=60) as client:
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
