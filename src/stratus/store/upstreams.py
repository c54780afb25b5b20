"""OpenAI-compatible upstreams an admin registered (cluster/upstream.py; migration 0006).

upstreams  name -> the model it serves here, its base URL and the model name it expects. Its API
           key is not in this table: it is a stored secret named `upstream/<name>`, AES-GCM
           encrypted under the master key (security/secrets.py), so `stratus secrets rotate`
           re-encrypts it with every other secret.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from stratus.store.errors import Conflict
from stratus.store.tables import metadata

upstreams = sa.Table(
    "upstreams",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(128), nullable=False),  # the name clients use here
    sa.Column("base_url", sa.String(2048), nullable=False),
    sa.Column("upstream_model", sa.String(256), nullable=False),  # the name the upstream expects
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(160), nullable=True),
    sa.Index("ix_upstreams_model", "model"),
)


def secret_name(name: str) -> str:
    return f"upstream/{name}"


def add(conn: Connection, name: str, model: str, base_url: str, upstream_model: str, by: str | None) -> dict:
    if conn.execute(sa.select(upstreams.c.name).where(upstreams.c.name == name)).first() is not None:
        raise Conflict(f"an upstream named {name!r} exists; remove it first")
    row = {
        "name": name,
        "model": model,
        "base_url": base_url,
        "upstream_model": upstream_model,
        "created_at": time.time(),
        "created_by": by,
    }
    conn.execute(upstreams.insert().values(**row))
    return row


def list_all(conn: Connection) -> list[dict]:
    rows = conn.execute(sa.select(upstreams).order_by(upstreams.c.model, upstreams.c.name))
    return [dict(r._mapping) for r in rows]


def remove(conn: Connection, name: str) -> bool:
    return bool(conn.execute(upstreams.delete().where(upstreams.c.name == name)).rowcount)
