"""Secrets at rest: AES-GCM round trip, nothing readable in the database file, rotation."""

from __future__ import annotations

import sqlite3

import pytest
from click.testing import CliRunner

from stratus.cli.main import main
from stratus.security.secrets import SecretError, SecretStore, load_keyring
from stratus.store import Store, database_url

VALUE = "sk-upstream-very-secret-value-123"


@pytest.fixture
def box(tmp_path, monkeypatch):
    monkeypatch.delenv("STRATUS_MASTER_KEY", raising=False)
    store = Store.open(database_url(tmp_path))
    yield SecretStore(store, load_keyring(tmp_path))
    store.close()


def test_round_trip_and_nothing_in_clear_on_disk(box, tmp_path):
    box.put("upstream/openai", VALUE)
    assert box.get("upstream/openai") == VALUE
    assert box.get("missing") is None
    assert VALUE.encode() not in (tmp_path / "stratus.db").read_bytes()
    assert (tmp_path / "master.key").stat().st_mode & 0o077 == 0


def test_tampered_or_moved_ciphertext_does_not_open(box, tmp_path):
    box.put("a", VALUE)
    box.put("b", "other")
    conn = sqlite3.connect(tmp_path / "stratus.db", isolation_level=None)
    token = conn.execute("SELECT ciphertext FROM stored_secrets WHERE name = 'a'").fetchone()[0]
    conn.execute("UPDATE stored_secrets SET ciphertext = ? WHERE name = 'b'", (token,))
    with pytest.raises(SecretError, match="does not decrypt"):
        box.get("b")  # the name is bound in: a value moved to another row fails
    flipped = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    conn.execute("UPDATE stored_secrets SET ciphertext = ? WHERE name = 'a'", (flipped,))
    with pytest.raises(SecretError):
        box.get("a")


def test_rotate_reencrypts_everything_and_retires_the_old_key(box, tmp_path):
    for i in range(3):
        box.put(f"s{i}", f"{VALUE}-{i}")
    old = box.ring.current
    result = CliRunner().invoke(main, ["secrets", "rotate-master-key", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "3 re-encrypted" in result.output
    ring = load_keyring(tmp_path)
    assert list(ring.keys) != [old] and len(ring.keys) == 1
    # this process still holds the old keyring: it picks up the new key from the file
    assert [box.get(f"s{i}") for i in range(3)] == [f"{VALUE}-{i}" for i in range(3)]
    assert box.ring.current == ring.current
    conn = sqlite3.connect(tmp_path / "stratus.db")
    assert {r[0] for r in conn.execute("SELECT key_id FROM stored_secrets")} == {ring.current}


def test_cli_set_and_list_never_print_the_value(tmp_path, monkeypatch):
    """The deprecated offline form (--data-dir: the database directly) still works for one release,
    with a warning; tests/integration/test_cli_gateway.py covers the form through the gateway."""
    monkeypatch.delenv("STRATUS_MASTER_KEY", raising=False)
    runner = CliRunner()
    result = runner.invoke(main, ["secrets", "set", "hook/slack", "--data-dir", str(tmp_path)], input=VALUE)
    assert result.exit_code == 0 and VALUE not in result.output
    assert "deprecated" in result.stderr
    listed = runner.invoke(main, ["secrets", "list", "--data-dir", str(tmp_path), "-o", "jsonl"])
    assert listed.stdout.split() == ['{"name":"hook/slack"}']


def test_master_key_from_the_environment(tmp_path):
    ring = load_keyring(tmp_path, env={"STRATUS_MASTER_KEY": "k1:" + "ab" * 32 + ",k2:" + "cd" * 32})
    assert ring.current == "k2" and ring.path is None
    with pytest.raises(SecretError):
        load_keyring(tmp_path, env={"STRATUS_MASTER_KEY": "short"})
