"""The first admin of a fresh data dir.

On a store without users, `bootstrap` creates the user `admin` (role admin) and one key for it:
the key given in STRATUS_ADMIN_KEY if that is set (it must be a well-formed stratus key, so it
has the entropy of one), otherwise a generated one, which the caller prints once. On a store that
already has users it does nothing: STRATUS_ADMIN_KEY is never a back door into a running system.
Two gateways bootstrapping one database at once create one admin between them (the user name is
unique, and the loser sees a conflict and steps back).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stratus.security import keys
from stratus.security.errors import Unavailable
from stratus.store import Conflict, Store, StoreUnavailable, directory
from stratus.store import apikeys as key_rows

ADMIN_USER = "admin"
ENV_VAR = "STRATUS_ADMIN_KEY"


@dataclass(frozen=True)
class Bootstrap:
    created: bool  # this call created the first admin
    key_id: str | None = None
    prefix: str | None = None
    generated_secret: str | None = field(default=None, repr=False)  # print once, then forget


def bootstrap(store: Store, admin_key: str | None = None) -> Bootstrap:
    """Create the first admin if the store has no users. `admin_key`: STRATUS_ADMIN_KEY's value."""
    new = keys.from_secret(admin_key) if admin_key else keys.generate()  # ValueError if malformed
    try:
        with store.begin() as conn:
            if directory.count_users(conn) > 0:
                return Bootstrap(created=False)
            user = directory.create_user(conn, ADMIN_USER, role="admin", created_by="bootstrap")
            key_id = keys.new_key_id()
            key_rows.create_key(
                conn,
                key_id=key_id,
                owner_id=user.id,
                team_id=None,
                name="bootstrap admin key",
                roles=None,
                models=None,
                expires_at=None,
                created_by="bootstrap",
            )
            key_rows.add_secret(conn, key_id, new.lookup, new.hash)
    except Conflict:
        return Bootstrap(created=False)  # another gateway bootstrapped this database first
    except StoreUnavailable as exc:
        raise Unavailable(str(exc)) from None
    return Bootstrap(
        created=True,
        key_id=key_id,
        prefix=new.prefix,
        generated_secret=None if admin_key else new.secret,
    )
