#!/usr/bin/env bash
# The engine on a GPU, checked and measured in one prepared run that ends within 10 minutes.
#
#   bench/gpu_check.sh --out DIR             # on a GPU machine with no network (docs/INSTALL.md)
#   bench/gpu_check.sh --dry-run --out DIR   # the same steps on a CPU, small (tests/unit/test_gpu_check.py)
#
# 1. Install: stratus's Python dependencies from bench/wheelhouse/ (made beforehand by
#    scripts/gpu_wheelhouse.sh on a machine with PyPI), next to the GPU machine's own torch,
#    into a private target directory; nothing is fetched. The dry run uses the running venv.
# 2. The engine's tests with CUDA (EngineConfig's device "auto" picks it), bounded in time.
# 3. bench/gpu_check.py: logits parity with transformers (float32 and bf16), throughput against
#    transformers generate with a static cache, one stream against the memory-bandwidth limit.
# Results: DIR/gpu_check.json, DIR/gpu_check.md, DIR/tests.log; the exit status is non-zero when
# a step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT_DIR=""
DRY_RUN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN="--dry-run" ;;
    --out) OUT_DIR="$2"; shift ;;
    *) echo "usage: $0 [--dry-run] --out DIR" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$OUT_DIR" ] || { echo "usage: $0 [--dry-run] --out DIR" >&2; exit 2; }
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
status=0

echo "== install"
if [ -z "$DRY_RUN" ]; then
  if ! ls bench/wheelhouse/*.whl >/dev/null 2>&1; then
    echo "bench/wheelhouse/ holds no wheels: make it with scripts/gpu_wheelhouse.sh (docs/INSTALL.md)" >&2
    exit 2
  fi
  SITE=$(mktemp -d /tmp/stratus-site.XXXX)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" bench/wheelhouse/*.whl || exit 1
  # The machine's torch stays; the wheelhouse's packages come after it on the path only where absent.
  export PYTHONPATH="$REPO/src:$REPO:$SITE"
else
  export PYTHONPATH="$REPO/src:$REPO"
fi
"$PY" -c "import torch, stratus; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1

echo "== engine tests"
if [ -z "$DRY_RUN" ]; then
  TESTS="tests/unit/engine tests/integration/test_streaming.py tests/integration/test_structured_outputs.py"
else
  TESTS="tests/unit/engine/test_parity.py::test_half_precision_checkpoints"
fi
timeout 300 "$PY" -m pytest -q -p no:cacheprovider --timeout 120 $TESTS >"$OUT_DIR/tests.log" 2>&1
rc=$?
tail -n 15 "$OUT_DIR/tests.log"
[ $rc -eq 0 ] || { echo "engine tests failed (exit $rc): $OUT_DIR/tests.log"; status=1; }

echo "== parity and speed"
timeout 420 "$PY" bench/gpu_check.py --out "$OUT_DIR" $DRY_RUN || status=1
exit $status
