#!/usr/bin/env bash
# Wheels of the stratus dependencies that the GPU image lacks, for a GPU machine with no network
# (bench/gpu_check.sh installs them from bench/wheelhouse/). Run where PyPI is reachable, after
# `make install-dev`, so the versions are the ones the suite was tested with.
#
#   scripts/gpu_wheelhouse.sh [PYTHON_VERSION]      # default 3.12, the GPU image's Python
#
# The list: every distribution that stratus's serving dependencies and the test tools the GPU
# check runs (pytest-timeout, openai) need, transitively, as installed in .venv, minus what the
# image already holds (its package list: docs/INSTALL.md), so the wheelhouse stays well under the
# 64 MiB that travels with a device call.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${1:-3.12}
PY=${PYTHON:-.venv/bin/python}
DEST=bench/wheelhouse
rm -rf "$DEST" && mkdir -p "$DEST"
PLATFORMS="--platform any --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
for n in 17 24 27 28 31 34 35 39; do PLATFORMS="$PLATFORMS --platform manylinux_2_${n}_x86_64"; done

"$PY" - "$PYVER" >"$DEST/requirements.txt" <<'PYEOF'
import importlib.metadata as md
import re
import sys

from packaging.markers import default_environment
from packaging.requirements import Requirement

# On the GPU image (read on 2026-11-17): left out of the wheelhouse.
IMAGE = set("""accelerate aiofiles aiohttp aiosignal annotated-doc anyio attrs certifi charset-normalizer
click cloudpickle filelock fsspec h11 hf-xet httpcore httpx huggingface-hub hypothesis idna
iniconfig jinja2 markupsafe numpy packaging pillow pip pluggy prometheus-client protobuf psutil
pygments pytest pyyaml regex requests rich safetensors setuptools sortedcontainers sympy
tokenizers torch tqdm transformers triton typing-extensions urllib3 uvloop mpmath networkx
nvidia-ml-py""".split())

env = default_environment()
env["python_version"] = sys.argv[1]
env["python_full_version"] = sys.argv[1] + ".0"


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


wanted = {}
todo = [("stratus", ())] + [(name, ()) for name in ("pytest-timeout", "openai")]
while todo:
    name, extras = todo.pop()
    dist = md.distribution(name)
    for raw in dist.requires or []:
        req = Requirement(raw)
        if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in (extras or ("",))):
            continue
        key = norm(req.name)
        if key in wanted or key in IMAGE or key == "stratus":
            continue
        wanted[key] = md.version(req.name)
        todo.append((req.name, tuple(req.extras)))
for key in sorted(wanted):
    print(f"{key}=={wanted[key]}")
PYEOF
echo "$(wc -l <"$DEST/requirements.txt") distributions the image lacks"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
  --implementation cp $PLATFORMS -d "$DEST" -r "$DEST/requirements.txt"
du -sh "$DEST"
