#!/usr/bin/env bash
# The llama.cpp extra for CI: llama-cpp-python is a source build (about 8 minutes on 2 cores),
# so it is built once into a wheel kept in a cache folder and installed from there on every
# later run (seconds). GGML_NATIVE=OFF: the cached wheel must not depend on the build CPU.
#   .ci/llamacpp.sh [PYTHON]        (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
[ -n "${1:-}" ] || make -s install  # the project's venv first (a no-op when up to date)
VERSION=0.3.36
WHEELS=${PERSONALIGN_WHEELS:-$HOME/.cache/personalign/wheels}
mkdir -p "$WHEELS"
if ! compgen -G "$WHEELS/llama_cpp_python-$VERSION-*.whl" >/dev/null; then
  echo "building llama-cpp-python $VERSION into $WHEELS (once)"
  start=$(date +%s)
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$PY" -m pip wheel -q --no-deps -w "$WHEELS" "llama-cpp-python==$VERSION"
  echo "built in $(( $(date +%s) - start )) s"
fi
# The wheel from the cache; the server extra's pure-Python dependencies from the index.
"$PY" -m pip install -q --find-links "$WHEELS" "llama-cpp-python[server]==$VERSION"
