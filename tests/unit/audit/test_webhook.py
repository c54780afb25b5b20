"""The alert webhook's signature, URL checks, and configuration stored encrypted (real SQLite)."""

import pytest

from stratus.audit.webhook import SECRET_NAME, AlertWebhook, check_url, shown, sign, verify
from stratus.security.errors import Invalid
from stratus.security.secrets import SecretStore, load_keyring
from stratus.store import Store, database_url

pytestmark = pytest.mark.timeout(30)


def test_signature_verifies_only_with_the_secret_time_and_body():
    sig = sign("s" * 32, "1700000000", b'{"a":1}')
    assert sig.startswith("sha256=") and verify("s" * 32, "1700000000", b'{"a":1}', sig)
    assert not verify("t" * 32, "1700000000", b'{"a":1}', sig)
    assert not verify("s" * 32, "1700000001", b'{"a":1}', sig)
    assert not verify("s" * 32, "1700000000", b'{"a":2}', sig)


def test_urls():
    assert check_url("https://ops.example/hook") == "https://ops.example/hook"
    for bad in ("ftp://x/y", "not a url", "http:///nohost", "javascript:alert(1)"):
        with pytest.raises(Invalid):
            check_url(bad)
    assert shown("https://user:pw@ops.example:8443/hook?token=abc") == "https://ops.example:8443/hook"


def test_configuration_is_stored_encrypted(tmp_path):
    store = Store.open(database_url(tmp_path))
    box = SecretStore(store, load_keyring(tmp_path))
    hook = AlertWebhook(lambda: box, ttl=0)
    assert hook.config() is None
    with pytest.raises(Invalid):
        hook.configure("http://127.0.0.1:9/h", "too-short")
    hook.configure("http://127.0.0.1:9/h?token=zzz", "a-webhook-secret-0123456789")
    assert hook.config() == {"url": "http://127.0.0.1:9/h?token=zzz", "secret": "a-webhook-secret-0123456789"}
    assert SECRET_NAME in box.names()
    store.close()
    blob = b"".join(f.read_bytes() for f in tmp_path.glob("stratus.db*"))
    assert b"a-webhook-secret" not in blob and b"token=zzz" not in blob
    box.store = Store.open(database_url(tmp_path))
    assert hook.clear() is True and hook.config() is None and hook.clear() is False
    box.store.close()
