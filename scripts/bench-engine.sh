#!/usr/bin/env bash
# Engine benchmark, genq vs llama.cpp side by side on the same GGUF and workload:
# builds genq (release) and llama.cpp's llama-batched-bench if needed, then runs both.
# Extra arguments go to `genq bench engine` (e.g. --batch-sizes 1,32 --weights native).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh >/dev/null
scripts/build-llamacpp.sh >/dev/null
cargo build --release --bin genq
target/release/genq bench engine --vs-llamacpp "$@"
