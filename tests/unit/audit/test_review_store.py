"""Logged content and key suspensions in the store, on SQLite and PostgreSQL: content goes in the
record's own transaction, opens only at its own seq, survives a key rotation; suspensions persist."""

from __future__ import annotations

import secrets

import pytest
import sqlalchemy as sa

from stratus.audit.content_log import ContentLog, content_text
from stratus.audit.log import AuditEvent, AuditLog
from stratus.audit.suspension import Suspensions
from stratus.audit.verify import verify
from stratus.security import admin, admin_keys
from stratus.security.access import AccessControl
from stratus.security.bootstrap import bootstrap
from stratus.security.errors import NotFound
from stratus.security.secrets import SecretError, SecretStore, decrypt, load_keyring, rotate
from stratus.store import Store, database_url
from stratus.store.review_tables import audit_content
from tests.pg import scratch_database

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path, monkeypatch):
    monkeypatch.delenv("STRATUS_MASTER_KEY", raising=False)
    if request.param == "sqlite":
        s = Store.open(database_url(tmp_path))
        yield s
        s.close()
    else:
        with scratch_database() as url:
            s = Store.open(url)
            yield s
            s.close()


def test_content_is_stored_with_its_record_and_survives_rotation(store, tmp_path):
    root = AccessControl(store).authenticate(bootstrap(store).generated_secret)
    admin.create_team(AccessControl(store), root, "ml")
    content = ContentLog(store, str(tmp_path), ttl=0)
    assert not content.enabled("ml")
    assert content.set_enabled("ml", True, "root", 1.0) == {"team": "ml", "content_logging": True}
    content.teams.refresh()
    assert content.enabled("ml") and not content.enabled("other") and not content.enabled(None)
    with pytest.raises(NotFound):
        content.set_enabled("nope", True, "root", 1.0)

    log = AuditLog(store, secrets.token_bytes(32))
    text = content_text({"messages": [{"role": "user", "content": "mail x@y.io"}]}, ["ok"])
    events = [
        AuditEvent(action="POST /v1/chat/completions", outcome="ok", request_id=f"r{i}", team="ml")
        for i in range(3)
    ]
    records = log.append_many(events, [text, None, text], content.ring)
    assert verify(log).ok  # the content rows do not touch the chain
    rows = content.read()
    assert [r["request_id"] for r in rows] == ["r2", "r0"]
    assert rows[0]["seq"] == records[2].seq and rows[0]["content"]["messages"][0]["content"] == "mail [email]"
    with store.connect() as conn:
        stored = conn.execute(sa.select(audit_content.c.ciphertext, audit_content.c.seq)).all()
    assert all("x@y.io" not in c and "[email]" not in c for c, _ in stored)
    with pytest.raises(SecretError):  # a ciphertext moved to another record does not open
        decrypt(content.ring, f"audit_content/{stored[1].seq}", stored[0].ciphertext)

    old = content.ring.current
    new, count = rotate(SecretStore(store, content.ring))
    assert new != old and count == 2
    assert [r["content"] for r in content.read()] == [r["content"] for r in rows]
    assert set(load_keyring(tmp_path).keys) == {new}  # the old key is retired
    with pytest.raises(ValueError):  # content but no key to seal it with: nothing is written
        log.append_many(events[:1], [text], None)
    assert len(list(log.records())) == 3


def test_suspensions_persist_and_need_a_real_key(store):
    access = AccessControl(store)
    root = access.authenticate(bootstrap(store).generated_secret)
    view, _ = admin_keys.create_key(access, root, "k")
    s = Suspensions(store, ttl=0)
    assert s.suspend(view["id"], "rate_spike", {"count": 400}) is True
    assert s.suspend(view["id"], "rate_spike") is False  # already suspended
    assert s.suspend("key_doesnotexist000", "rate_spike") is False
    fresh = Suspensions(store, ttl=0)  # another gateway, or after a restart
    fresh.ids.refresh()
    assert view["id"] in fresh.ids
    (row,) = fresh.list()
    assert row["reason"] == "rate_spike" and row["detail"] == {"count": 400}
    assert fresh.reinstate(view["id"]) is True and fresh.reinstate(view["id"]) is False
    with pytest.raises(NotFound):
        fresh.reinstate("key_doesnotexist000")
    s.ids.refresh()
    assert view["id"] not in s.ids and fresh.list() == []
