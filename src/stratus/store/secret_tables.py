"""The table of secrets stratus keeps for itself, encrypted (security/secrets.py; migration 0004).

stored_secrets  name -> AES-GCM ciphertext ("v1:<key id>:<base64 nonce+ciphertext>"); the name
                is bound into the ciphertext, so a value moved to another row fails to decrypt
"""

from __future__ import annotations

import sqlalchemy as sa

from stratus.store.tables import metadata

stored_secrets = sa.Table(
    "stored_secrets",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("ciphertext", sa.Text, nullable=False),
    sa.Column("key_id", sa.String(16), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
