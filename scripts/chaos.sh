#!/usr/bin/env bash
# The chaos soak alone: SECONDS of seeded random faults (worker SIGKILL and SIGTERM, a RabbitMQ
# node killed and restarted in a three-node cluster, Redis killed and restarted, malformed
# messages, invalid and poison jobs) while jobs are published and read; prints one line with
# confirmed, done, failed by reason, lost, duplicate executions and the longest wait.
# Usage: scripts/chaos.sh SECONDS [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:?usage: scripts/chaos.sh SECONDS [SEED]}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/genq/target}"
scripts/services.sh
cargo build --workspace --all-targets
GENQ_CHAOS_SECONDS="$seconds" GENQ_CHAOS_SEED="${2:-7}" \
  cargo test -p genq-tests --test chaos -- --nocapture 2>&1 | grep -E '^chaos soak|test result|panicked|FAILED' 
