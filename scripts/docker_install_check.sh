#!/usr/bin/env bash
# Runs the Dockerfile's install steps (the RUN lines between "# install-check: begin" and
# "# install-check: end" of its build stage) in a clean virtualenv, without Docker: the same pip
# commands against a copy of the build context, so a broken install step fails here first.
#
#   scripts/docker_install_check.sh            # in a temporary directory, removed afterwards
#   scripts/docker_install_check.sh --print    # only print the commands it would run
#
# The Dockerfile's ARG defaults apply; an environment variable of the same name overrides one
# (TORCH_INDEX=https://pypi.org/simple where PyTorch's index cannot be reached: pip then takes
# torch==2.13.0 from the configured index). Needs python3.11 (PYTHON overrides).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dockerfile="$root/Dockerfile"

# ARG NAME=default of the build stage, as NAME=value lines (an environment value wins)
args() {
    awk '/^FROM .* AS build/{b=1; next} /^FROM /{b=0} b && /^ARG [A-Z_]+=/{sub(/^ARG /,""); print}' "$dockerfile"
}
# the RUN commands between the markers, one a line
commands() {
    awk '/# install-check: begin/{on=1; next} /# install-check: end/{on=0} on && /^RUN /{sub(/^RUN /,""); print}' "$dockerfile"
}

if [[ "${1:-}" == "--print" ]]; then
    commands
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# the build context as the Dockerfile sees it: COPY pyproject.toml README.md ./ and COPY src ./src
mkdir -p "$work/src"
cp "$root/pyproject.toml" "$root/README.md" "$work/src/"
cp -r "$root/src" "$work/src/src"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +

"${PYTHON:-python3.11}" -m venv "$work/opt/stratus"
while IFS='=' read -r name default; do
    if [[ -z "${!name:-}" ]]; then
        export "$name=${default//\"/}"
    else
        export "$name"
    fi
done < <(args)

status=0
while IFS= read -r cmd; do
    # the image's paths, here: /opt/stratus -> $work/opt/stratus, /src -> $work/src
    local_cmd="${cmd//\/opt\/stratus/$work/opt/stratus}"
    local_cmd="${local_cmd//\/src/$work/src}"
    echo "+ $cmd"
    start=$(date +%s)
    if ! (cd "$work/src" && bash -c "$local_cmd"); then
        echo "docker_install_check: FAILED: $cmd" >&2
        status=1
        break
    fi
    echo "  ok in $(( $(date +%s) - start )) s"
done < <(commands)

if [[ $status == 0 ]]; then
    "$work/opt/stratus/bin/python" -c "import torch; print('torch', torch.__version__)"
    du -sh "$work/opt/stratus" | awk '{print "virtualenv size:", $1}'
    echo "docker_install_check: OK"
fi
exit $status
