#!/usr/bin/env bash
# Build llama.cpp's `llama-batched-bench` from the llama-cpp-python sdist on PyPI (the reference
# engine for `genq bench engine --vs-llamacpp`) into .cache/llamacpp/ (git-ignored). Once.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="$root/.cache/llamacpp"
bin="$cache/bin/llama-batched-bench"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$cache"
# cmake and ninja from the OS packages: with them on PATH, preparing the sdist's metadata does not
# pull PyPI's cmake/ninja (which may come as sdists and compile for many minutes).
if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake ninja-build >/dev/null
fi
src="$cache/src"
"$root/scripts/fetch-llamacpp-src.sh" >/dev/null
# Native CPU flags, but without AMX unless LLAMACPP_AMX=1: on the virtual machines this was
# measured on, the CPU lists AMX yet the first tile instruction dies with SIGILL (genq's own
# kernels use AVX-512 VNNI at most, so the comparison stays like for like).
no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
[[ "${LLAMACPP_AMX:-0}" == 1 ]] && no_amx=""
cmake -S "$src/vendor/llama.cpp" -B "$cache/build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" \
  -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
cmake --build "$cache/build" --target llama-batched-bench -j "$(nproc)" >/dev/null
mkdir -p "$cache/bin"
cp "$cache/build/bin/llama-batched-bench" "$bin"
echo "$bin"
