"""Secrets at rest: AES-256-GCM under a master key that the database does not hold.

    ring = load_keyring("data")                 # STRATUS_MASTER_KEY, else data/master.key (0600)
    box = SecretStore(store, ring)
    box.put("upstream/openai", "sk-...")        # stored as v1:<key id>:<base64(nonce | ciphertext)>
    box.get("upstream/openai")
    rotate(box)                                 # new key, every value re-encrypted, old key retired

The keyring holds one or more keys, "id:hex" separated by commas (env) or one per line (file);
the last is current. Values name the key that encrypted them, so during a rotation readers keep
working: a value under a key the process has not loaded yet makes it re-read the key file.
The secret's name is the associated data: a ciphertext copied to another name fails to open.
"""

from __future__ import annotations

import base64
import os
import re
import secrets as random
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stratus.store import Store, review_tables, secret_tables
from stratus.store.review_tables import content_aad

ENV_VAR = "STRATUS_MASTER_KEY"
# a stored secret's name ("upstream/vllm-a", "hook/slack"): path-like, no empty or '..' segment
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
NAME_MAX = 128


def valid_name(name: str) -> bool:
    return len(name) <= NAME_MAX and bool(NAME_RE.match(name)) and ".." not in name


KEY_FILE = "master.key"
VERSION = "v1"


class SecretError(Exception):
    """A key is missing or malformed, or a ciphertext does not open (tampered or wrong key)."""


@dataclass
class Keyring:
    keys: dict[str, bytes]  # id -> 32-byte key, in order; the last is current
    path: Path | None = None  # the key file it came from (None: the environment)

    @property
    def current(self) -> str:
        return next(reversed(self.keys))

    def reload(self) -> None:
        if self.path is not None:
            self.keys = _parse(self.path.read_text(), str(self.path))


def _parse(text: str, where: str) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    for entry in text.replace(",", "\n").split():
        key_id, sep, hexkey = entry.partition(":")
        try:
            raw = bytes.fromhex(hexkey)
        except ValueError:
            raw = b""
        if not sep or not key_id or len(raw) != 32:
            raise SecretError(f"{where}: each key is ID:64-hex-characters (32 bytes)")
        keys[key_id] = raw
    if not keys:
        raise SecretError(f"{where}: no key")
    return keys


def new_key_entry() -> str:
    return f"{random.token_hex(4)}:{random.token_hex(32)}"


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_keyring(data_dir: str | os.PathLike, env: dict[str, str] | None = None) -> Keyring:
    env = os.environ if env is None else env
    if env.get(ENV_VAR):
        return Keyring(_parse(env[ENV_VAR], ENV_VAR))
    path = Path(data_dir).expanduser() / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, new_key_entry() + "\n")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(f"{path} is readable by others; chmod 600 it")
    return Keyring(_parse(path.read_text(), str(path)), path)


def encrypt(ring: Keyring, name: str, plaintext: str) -> str:
    key_id = ring.current
    nonce = os.urandom(12)
    sealed = AESGCM(ring.keys[key_id]).encrypt(nonce, plaintext.encode(), name.encode())
    return f"{VERSION}:{key_id}:{base64.b64encode(nonce + sealed).decode()}"


def decrypt(ring: Keyring, name: str, token: str) -> str:
    version, _, rest = token.partition(":")
    key_id, _, body = rest.partition(":")
    if version != VERSION or not body:
        raise SecretError(f"secret {name!r}: not a {VERSION} ciphertext")
    if key_id not in ring.keys:
        ring.reload()  # a rotation may have added it since this process loaded the keyring
    if key_id not in ring.keys:
        raise SecretError(f"secret {name!r}: encrypted under key {key_id}, which the keyring lacks")
    raw = base64.b64decode(body)
    try:
        return AESGCM(ring.keys[key_id]).decrypt(raw[:12], raw[12:], name.encode()).decode()
    except InvalidTag:
        raise SecretError(f"secret {name!r} does not decrypt: tampered, moved, or wrong key") from None


class SecretStore:
    def __init__(self, store: Store, ring: Keyring):
        self.store = store
        self.ring = ring

    def put(self, name: str, value: str) -> None:
        self.ring.reload()  # a rotation elsewhere may have made a newer key current
        token = encrypt(self.ring, name, value)
        key_id, now = self.ring.current, time.time()
        with self.store.begin() as conn:
            secret_tables.put_secret(conn, name, token, key_id, now)

    def get(self, name: str) -> str | None:
        with self.store.connect() as conn:
            token = secret_tables.secret_ciphertext(conn, name)
        return None if token is None else decrypt(self.ring, name, token)

    def names(self) -> list[str]:
        with self.store.connect() as conn:
            return secret_tables.secret_names(conn)

    def delete(self, name: str) -> bool:
        with self.store.begin() as conn:
            return secret_tables.delete_secret(conn, name)

    def reencrypt_all(self) -> int:
        """Every value under the current key, one row per transaction (readers never block)."""
        count = 0
        for name in self.names():
            with self.store.begin() as conn:
                row = secret_tables.get_secret_row(conn, name)
                if row is None or row.key_id == self.ring.current:
                    continue
                plain = decrypt(self.ring, name, row.ciphertext)
                secret_tables.update_secret(
                    conn, name, encrypt(self.ring, name, plain), self.ring.current, time.time()
                )
            count += 1
        return count


def reencrypt_content(store: Store, ring: Keyring, batch: int = 500) -> int:
    """Logged content (audit/content_log.py) under the current key, a batch per transaction."""
    count, last = 0, 0
    while True:
        with store.begin() as conn:
            rows = review_tables.content_not_under(conn, ring.current, last, batch)
            for row in rows:
                name = content_aad(row.seq)
                plain = decrypt(ring, name, row.ciphertext)
                review_tables.set_content_ciphertext(conn, row.id, encrypt(ring, name, plain), ring.current)
        count += len(rows)
        if len(rows) < batch:
            return count
        last = rows[-1].id


def rotate(box: SecretStore) -> tuple[str, int]:
    """Add a new key (file keyrings), re-encrypt every value under it (stored secrets and logged
    content), then retire the old keys.

    With STRATUS_MASTER_KEY the operator appends the new key to the variable first (the last
    entry is current), runs this, and then drops the old entries."""
    ring = box.ring
    if ring.path is not None:
        text = ring.path.read_text().rstrip("\n") + "\n" + new_key_entry() + "\n"
        _write_private(ring.path, text)
        ring.reload()
    count = box.reencrypt_all() + reencrypt_content(box.store, ring)
    if ring.path is not None:
        current = ring.current
        _write_private(ring.path, f"{current}:{ring.keys[current].hex()}\n")
        ring.reload()
    return ring.current, count
