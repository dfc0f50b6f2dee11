#!/usr/bin/env bash
# The first command: fetch the default model, build genq, and run the example prompts through
# the whole pipeline in one process (no RabbitMQ, no Redis needed).
set -euo pipefail
cd "$(dirname "$0")/.."
# The same build folder as scripts/test.sh, so the two commands share compiled dependencies.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/genq/target}"
scripts/fetch-model.sh
cargo build --release --bin genq
"$CARGO_TARGET_DIR/release/genq" run examples/prompts.jsonl "$@"
