#!/usr/bin/env bash
# Scaling on one host: 1, 2 and 3 genq-worker processes on the same queue, with the echo engine
# and with the real default model; prints throughput per worker count and jobs per worker.
# Needs RabbitMQ and Redis (scripts/services.sh starts them) and the model (fetched here).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/genq/target}"
scripts/services.sh
scripts/fetch-model.sh
cargo build --workspace --bins
cargo test -p genq-tests --test scaling -- --include-ignored --nocapture --test-threads 1
