#!/usr/bin/env bash
# Gateway load: one echo worker and one `genq serve` on a private model name, then
# scripts/gateway_load.py sends REQUESTS synchronous POST /generate from CONCURRENCY clients and
# prints requests/s and latency. Usage: scripts/bench-gateway.sh [REQUESTS] [CONCURRENCY]
# Needs RabbitMQ and Redis (scripts/services.sh starts them); builds the release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/genq/target}"
requests="${1:-2000}"
concurrency="${2:-16}"
port="${GENQ_BENCH_PORT:-18080}"
scripts/services.sh >/dev/null
cargo build --release --bins -q
bin="$CARGO_TARGET_DIR/release"
model="gw-bench-$$"
logs="$(mktemp -d)"
cleanup() {
  kill "${serve_pid:-}" "${worker_pid:-}" 2>/dev/null || true
  wait 2>/dev/null || true
  for q in "genq.jobs.$model" "genq.jobs.$model.high" "genq.jobs.$model.low"; do rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true; done
  redis-cli --scan --pattern "$model:*" | xargs -r -n 1000 redis-cli unlink >/dev/null || true
}
trap cleanup EXIT
"$bin/genq-worker" --engine echo --model-name "$model" --key-prefix "$model" --prefetch 512 --metrics-addr 127.0.0.1:0 >"$logs/worker.log" 2>&1 &
worker_pid=$!
"$bin/genq" serve --listen "127.0.0.1:$port" --model "$model" --key-prefix "$model" >"$logs/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 100); do
  curl -fs -o /dev/null "http://127.0.0.1:$port/healthz" && break
  sleep 0.1
done
python3 scripts/gateway_load.py "$port" "$requests" "$concurrency"
