"""The table of secrets stratus keeps for itself, encrypted (security/secrets.py; migration 0004).

stored_secrets  name -> AES-GCM ciphertext ("v1:<key id>:<base64 nonce+ciphertext>"); the name
                is bound into the ciphertext, so a value moved to another row fails to decrypt

The functions below take a `Connection` from `Store.begin()` (writes) or `Store.connect()` (reads)
and see ciphertexts only: security/secrets.py encrypts and decrypts.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from stratus.store.tables import metadata

stored_secrets = sa.Table(
    "stored_secrets",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("ciphertext", sa.Text, nullable=False),
    sa.Column("key_id", sa.String(16), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


def update_secret(conn: Connection, name: str, ciphertext: str, key_id: str, updated_at: float) -> bool:
    """Replace the stored secret `name`; False (nothing written) if there is none."""
    row = {"ciphertext": ciphertext, "key_id": key_id, "updated_at": updated_at}
    return bool(
        conn.execute(stored_secrets.update().where(stored_secrets.c.name == name).values(**row)).rowcount
    )


def put_secret(conn: Connection, name: str, ciphertext: str, key_id: str, updated_at: float) -> None:
    """Store the secret `name`: replace it, or add it."""
    if not update_secret(conn, name, ciphertext, key_id, updated_at):
        row = {"ciphertext": ciphertext, "key_id": key_id, "updated_at": updated_at}
        conn.execute(stored_secrets.insert().values(name=name, **row))


def secret_ciphertext(conn: Connection, name: str) -> str | None:
    return conn.execute(sa.select(stored_secrets.c.ciphertext).where(stored_secrets.c.name == name)).scalar()


def get_secret_row(conn: Connection, name: str) -> Row[Any] | None:
    """The row (name, ciphertext, key_id, updated_at) of the secret `name`, or None."""
    return conn.execute(sa.select(stored_secrets).where(stored_secrets.c.name == name)).first()


def secret_names(conn: Connection) -> list[str]:
    return list(conn.execute(sa.select(stored_secrets.c.name).order_by(stored_secrets.c.name)).scalars())


def delete_secret(conn: Connection, name: str) -> bool:
    return bool(conn.execute(stored_secrets.delete().where(stored_secrets.c.name == name)).rowcount)
