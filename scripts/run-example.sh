#!/usr/bin/env bash
# The first command: fetch the default model, build genq, and run the example prompts through
# the whole pipeline in one process (no RabbitMQ, no Redis needed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
cargo build --release --bin genq
target/release/genq run examples/prompts.jsonl "$@"
