#!/usr/bin/env bash
# Create bench/.venv-litellm with LiteLLM's proxy, the peer of bench/gateway.py.
#
#   bash bench/peers/litellm.sh       # ~2-4 min and ~800 MB the first time; a no-op after
#
# LiteLLM lives in a venv of its own: its dependencies (and their pins) never meet stratus's.
# bench/gateway.py starts it without a database (a master key only, the model cost map read
# from the package: LITELLM_LOCAL_MODEL_COST_MAP=True, so nothing is fetched at start-up).
# The version is pinned (LITELLM_VERSION overrides it): 1.108.0 is the newest whose [proxy]
# dependencies all resolved from the package index here; 1.107.0 was a compromised release.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LITELLM_VENV:-$here/.venv-litellm}"
version="${LITELLM_VERSION:-1.108.0}"
python="${PYTHON:-python3}"

check() {
    LITELLM_LOCAL_MODEL_COST_MAP=True "$venv/bin/python" -c \
        "import importlib.metadata as m, litellm.proxy.proxy_server; print('litellm', m.version('litellm'))"
}

if [[ -x "$venv/bin/litellm" ]] && check >/dev/null 2>&1; then
    echo "litellm venv ready: $venv ($(check 2>/dev/null | tail -1))"
    exit 0
fi
if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating $venv"
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --upgrade pip >/dev/null
echo "installing litellm[proxy]==$version (a few minutes)"
"$venv/bin/python" -m pip install "litellm[proxy]==$version"
check
echo "litellm venv ready: $venv"
