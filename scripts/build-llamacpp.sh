#!/usr/bin/env bash
# Build llama.cpp's `llama-batched-bench` from the llama-cpp-python sdist on PyPI (the reference
# engine for `genq bench engine --vs-llamacpp`) into .cache/llamacpp/ (git-ignored). Once.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="$root/.cache/llamacpp"
# LLAMACPP_AMX=1 builds a second binary with AMX (llama-batched-bench-amx, its own build dir).
# LLAMACPP_AVX2=1 builds one for AVX2 machines (llama-batched-bench-avx2): AVX2, FMA, F16C and
# BMI2 only, no AVX-512 or AVX-VNNI, whatever this CPU has.
amx="${LLAMACPP_AMX:-0}"
avx2="${LLAMACPP_AVX2:-0}"
suffix=""
[[ "$amx" == 1 ]] && suffix="-amx"
[[ "$avx2" == 1 ]] && suffix="-avx2"
bin="$cache/bin/llama-batched-bench$suffix"
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
# Native CPU flags, without AMX by default (llama.cpp's AVX-512 VNNI kernels); LLAMACPP_AMX=1
# keeps AMX, to compare with genq's AMX kernel on CPUs that have it.
no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
[[ "$amx" == 1 ]] && no_amx=""
cpu_flags=(-DGGML_NATIVE=ON)
if [[ "$avx2" == 1 ]]; then
  no_amx=""
  cpu_flags=(-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
    -DGGML_BMI2=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF
    -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
fi
build="$cache/build$suffix"
cmake -S "$src/vendor/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" "${cpu_flags[@]}" \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
cmake --build "$build" --target llama-batched-bench -j "$(nproc)" >/dev/null
mkdir -p "$cache/bin"
cp "$build/bin/llama-batched-bench" "$bin"
echo "$bin"
