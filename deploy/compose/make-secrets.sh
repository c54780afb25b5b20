#!/bin/sh
# Writes the secret files compose.yaml mounts (./secrets/, mode 0600), random and consistent with
# each other: the PostgreSQL and Redis passwords, the URLs that carry them, the first admin's API
# key, the audit key and the master key of stored secrets. Existing files are kept, so running it
# again changes nothing; delete a file to make it anew (the audit and master keys must then match
# what the database already holds: see docs/DEPLOY.md before you do).
set -eu
cd "$(dirname "$0")/../.."
umask 077
mkdir -p secrets

hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

write() {  # write NAME VALUE, unless secrets/NAME exists
    if [ ! -s "secrets/$1" ]; then
        printf %s "$2" > "secrets/$1"
        echo "made secrets/$1"
    fi
}

write postgres_password "$(hex 24)"
write redis_password "$(hex 24)"
write database_url "postgresql://stratus:$(cat secrets/postgres_password)@postgres:5432/stratus"
write redis_url "redis://:$(cat secrets/redis_password)@redis:6379/0"
write audit_key "$(hex 32)"
write master_key "$(hex 4):$(hex 32)"
if [ ! -s secrets/admin_key ]; then
    # a well-formed stratus key: from a local install, else from the image
    if command -v stratus >/dev/null 2>&1; then
        key=$(stratus keys generate)
    else
        key=$(docker compose run --rm --no-deps -T --entrypoint stratus gateway keys generate)
    fi
    write admin_key "$key"
fi
