#!/usr/bin/env bash
# Regenerates worker/tests/fixtures/llamacpp_reference.json with llama.cpp (see
# scripts/llamacpp-reference.py). Uses the llama-cpp-python sdist and the CMake build dir that
# scripts/build-llamacpp.sh leaves in .cache/llamacpp/ (run that first); builds the `llama`
# shared library there if missing and links it with its ggml libraries into .cache/llamacpp/lib.
# The Python bindings are used from the sdist as is (ctypes, no pip build).
# Extra arguments go to the Python script (--gguf PATH, --out PATH).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="$root/.cache/llamacpp"
src="$cache/src"
build="$cache/build"
lib="$cache/lib"
if [[ ! -d "$src/llama_cpp" || ! -f "$build/CMakeCache.txt" ]]; then
  echo "no llama.cpp sources/build dir in $cache: run scripts/build-llamacpp.sh first" >&2
  exit 1
fi
if [[ ! -e "$build/bin/libllama.so" ]]; then
  nice cmake --build "$build" --target llama -j "$(nproc)" >/dev/null
fi
mkdir -p "$lib"
for f in "$build"/bin/libllama.so* "$build"/bin/libggml*.so*; do
  ln -sf "$f" "$lib/$(basename "$f")"
done
# The bindings' own pure-Python dependencies (pyproject.toml of the sdist).
python3 -c 'import numpy, diskcache, jinja2, typing_extensions' 2>/dev/null ||
  python3 -m pip install --quiet numpy diskcache jinja2 typing-extensions
cd "$root"
PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}" LLAMA_CPP_LIB_PATH="$lib" LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  python3 "$root/scripts/llamacpp-reference.py" \
  --gguf "$root/models/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --out "$root/worker/tests/fixtures/llamacpp_reference.json" "$@"
