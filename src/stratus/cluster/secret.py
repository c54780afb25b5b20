"""The cluster secret: the bearer token gateways and workers use with each other.

    secret = load_cluster_secret(file="/etc/stratus/cluster.secret")   # else STRATUS_CLUSTER_SECRET

Read from a file (mode 0600 recommended; a flag would show it in `ps`) or the environment, never
logged. At least 32 characters; `python -c "import secrets; print(secrets.token_urlsafe(32))"`
makes one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ENV_VAR = "STRATUS_CLUSTER_SECRET"
MIN_LENGTH = 32


class ClusterSecretError(ValueError):
    """No usable secret: the message says where it looked and what is wrong."""


def load_cluster_secret(
    file: str | os.PathLike | None = None, env: Mapping[str, str] | None = None
) -> bytes | None:
    """The secret from `file`, else from STRATUS_CLUSTER_SECRET; None when neither is set."""
    env = os.environ if env is None else env
    if file:
        try:
            text, where = Path(file).read_text(), str(file)
        except OSError as exc:
            raise ClusterSecretError(f"cluster secret file {file}: {exc.strerror}") from None
    elif env.get(ENV_VAR):
        text, where = env[ENV_VAR], ENV_VAR
    else:
        return None
    secret = text.strip()
    if len(secret) < MIN_LENGTH or any(c.isspace() for c in secret) or not secret.isprintable():
        raise ClusterSecretError(
            f"{where}: the cluster secret must be at least {MIN_LENGTH} printable characters without "
            'spaces (make one with: python -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    return secret.encode()
