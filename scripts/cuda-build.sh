#!/usr/bin/env bash
# Builds `genq-worker`, `genq` and `genq-gpu-check` with candle's CUDA backend (`--features cuda`)
# on a machine with no GPU: the toolkit comes from scripts/cuda-toolkit.sh (PyPI wheels, cached),
# and the kernels are compiled for CUDA_COMPUTE_CAP (default 90: H100/H200).
#
#   scripts/cuda-build.sh                    # -> $CARGO_TARGET_DIR/release/{genq-worker,genq,genq-gpu-check}
#   scripts/cuda-build.sh --stage            # also copies a stripped genq-gpu-check into
#                                            # .cache/gpu-check/bin (git-ignored), for scripts/gpu-check.sh
#   CUDA_COMPUTE_CAP=80 scripts/cuda-build.sh
#
# The CUDA build has its own target folder (GENQ_CUDA_TARGET_DIR, default
# ~/.cache/genq/target-cuda), so it never invalidates the CPU build's. Other arguments go to
# `cargo build`. Prints the folder of the binaries. The binaries need the NVIDIA driver's
# libcuda.so.1 and the CUDA 13 libraries at run time (LD_LIBRARY_PATH from cuda-toolkit.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
stage=0
if [[ "${1:-}" == "--stage" ]]; then
  stage=1
  shift
fi
eval "$(scripts/cuda-toolkit.sh)"
export CARGO_TARGET_DIR="${GENQ_CUDA_TARGET_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/genq/target-cuda}"
start=$SECONDS
cargo build --release --locked --features genq-worker/cuda,genq-cli/cuda \
  --bin genq-worker --bin genq --bin genq-gpu-check "$@" >&2
echo "cuda-build: built in $((SECONDS - start)) s for compute capability $CUDA_COMPUTE_CAP" >&2
if (( stage )); then
  mkdir -p "$root/.cache/gpu-check/bin"
  strip -o "$root/.cache/gpu-check/bin/genq-gpu-check" "$CARGO_TARGET_DIR/release/genq-gpu-check"
  echo "cuda-build: staged $(du -sh "$root/.cache/gpu-check/bin" | cut -f1) in .cache/gpu-check/bin" >&2
fi
echo "$CARGO_TARGET_DIR/release"
