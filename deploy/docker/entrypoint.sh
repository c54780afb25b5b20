#!/bin/sh
# The image's entrypoint: each secret may come from a file (Docker/Compose secrets, Kubernetes
# volumes) as NAME_FILE=/run/secrets/..., the convention of the official database images; the
# value is exported as NAME for stratus, then `stratus "$@"` replaces this shell.
set -eu
for name in STRATUS_ADMIN_KEY STRATUS_AUDIT_KEY STRATUS_MASTER_KEY STRATUS_CLUSTER_SECRET \
            STRATUS_DATABASE_URL STRATUS_REDIS_URL STRATUS_API_KEY; do
    file_var="${name}_FILE"
    eval "file=\${$file_var:-}"
    if [ -n "$file" ]; then
        eval "given=\${$name:-}"
        if [ -n "$given" ]; then
            echo "stratus-entrypoint: both $name and $file_var are set; use one" >&2
            exit 2
        fi
        if [ ! -r "$file" ]; then
            echo "stratus-entrypoint: $file_var=$file is not a readable file" >&2
            exit 2
        fi
        value=$(cat "$file")
        export "$name=$value"
        unset "$file_var"
    fi
done
exec stratus "$@"
