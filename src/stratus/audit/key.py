"""The audit HMAC key: from STRATUS_AUDIT_KEY, else a key file under the data directory.

    key = load_audit_key("data")     # bytes; creates data/audit.key (mode 0600) the first time

The key never goes into the database: whoever can edit the database cannot forge a record.
STRATUS_AUDIT_KEY holds at least 32 hex characters (or any string of 16+ characters, used as
its UTF-8 bytes). A key file that others can read is refused.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

ENV_VAR = "STRATUS_AUDIT_KEY"
KEY_FILE = "audit.key"
KEY_BYTES = 32


class AuditKeyError(Exception):
    """The audit key is missing, too short, or its file is readable by others."""


def _decode(text: str) -> bytes:
    text = text.strip()
    try:
        raw = bytes.fromhex(text)
        if len(raw) >= 16:
            return raw
    except ValueError:
        pass
    if len(text) < 16:
        raise AuditKeyError(f"{ENV_VAR} is too short: give 32+ hex characters or 16+ characters")
    return text.encode("utf-8")


def load_audit_key(data_dir: str | os.PathLike, env: dict[str, str] | None = None) -> bytes:
    env = os.environ if env is None else env
    if env.get(ENV_VAR):
        return _decode(env[ENV_VAR])
    path = Path(data_dir).expanduser() / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(KEY_BYTES) + "\n")
            f.flush()
            os.fsync(f.fileno())
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuditKeyError(f"{path} is readable by others (mode {oct(mode & 0o777)}); chmod 600 it")
    return _decode(path.read_text())
