#!/usr/bin/env bash
# The llama.cpp extra (`make install` runs this): llama-cpp-python is a source build (5.5-7
# minutes on 2 cores), so it is built once into a wheel kept in a cache folder and installed
# from there on every later run (seconds).
#   .ci/llamacpp.sh [PYTHON] [--build-only]   (default: .venv/bin/python)
# --build-only fills the cache and installs nothing: `make` runs it beside pip's downloads.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
[ -n "${1:-}" ] || make -s install  # the project's venv first (a no-op when up to date)
BUILD_ONLY=${2:-}
VERSION=0.3.36
# The instruction sets are named, never "native": a native build died with "Illegal instruction"
# on a CPU listing AMX. AVX-512 only where this CPU has it; the cache folder is keyed by the set.
ISA="-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
ISA_KEY=avx2
if grep -qw avx512f /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo; then
  ISA="$ISA -DGGML_AVX512=ON"
  ISA_KEY=avx512
fi
WHEELS=${PERSONALIGN_WHEELS:-$HOME/.cache/personalign/wheels}/$ISA_KEY
mkdir -p "$WHEELS"
if ! compgen -G "$WHEELS/llama_cpp_python-$VERSION-*.whl" >/dev/null; then
  echo "building llama-cpp-python $VERSION into $WHEELS (once)"
  start=$(date +%s)
  # No multimodal library (LLAVA_BUILD, 54 sources): the package loads it only for image chats.
  # --no-cache-dir: pip's own wheel cache ignores CMAKE_ARGS and would hand back a build made
  # with other instruction sets.
  CMAKE_ARGS="-DGGML_NATIVE=OFF $ISA -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAVA_BUILD=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$PY" -m pip wheel -q --no-deps --no-cache-dir -w "$WHEELS" "llama-cpp-python==$VERSION"
  echo "built in $(( $(date +%s) - start )) s"
fi
[ "$BUILD_ONLY" != --build-only ] || exit 0
# The wheel from the cache; the server extra's pure-Python dependencies from the index.
"$PY" -m pip install -q --find-links "$WHEELS" "llama-cpp-python[server]==$VERSION"
