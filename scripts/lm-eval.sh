#!/usr/bin/env bash
# Scores a genq gateway with lm-evaluation-harness: the local tasks in eval/ (multiple-choice facts
# by log-likelihood, short answers by generation) through lm-eval's `local-completions` model on
# /v1/completions, then prints lm-eval's table. Task data are files in eval/data; nothing is
# downloaded but Python packages (a venv outside the checkout, made once).
# Usage: scripts/lm-eval.sh [--start] [--limit N] [--tasks LIST] [-- MORE_LM_EVAL_ARGS...]
#   --start  also start RabbitMQ and Redis (scripts/services.sh), a genq-worker and `genq serve`
#            from built binaries, and stop the worker and gateway at the end. Binaries come from
#            $GENQ_BIN_DIR, else $CARGO_TARGET_DIR/release, else $CARGO_TARGET_DIR/debug.
#   --tasks  default genq (genq_facts and genq_qa); genq_facts_capitals etc. run one category.
# Environment: GENQ_LM_EVAL_URL (default http://127.0.0.1:8080/v1/completions; with --start the
# gateway listens on 127.0.0.1:$GENQ_LM_EVAL_PORT, default 18090), GENQ_LM_EVAL_MODEL (default
# smollm2-135m-instruct), GENQ_API_KEY or OPENAI_API_KEY (bearer token, when the gateway has
# GENQ__GATEWAY__API_KEYS), GENQ_LM_EVAL_CONCURRENCY (requests in flight, default 8),
# GENQ_MODEL_PATH (the served GGUF, whose tokenizer lm-eval counts context tokens with; default
# models/SmolLM2-135M-Instruct.Q4_1.gguf), GENQ_LM_EVAL_VENV (the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/genq"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"

start=0
tasks=genq
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --start) start=1 ;;
    --limit) extra+=(--limit "$2"); shift ;;
    --tasks) tasks="$2"; shift ;;
    --) shift; extra+=("$@"); break ;;
    *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done

model="${GENQ_LM_EVAL_MODEL:-smollm2-135m-instruct}"
default_model_path=models/SmolLM2-135M-Instruct.Q4_1.gguf
model_path="${GENQ_MODEL_PATH:-$default_model_path}"
port="${GENQ_LM_EVAL_PORT:-18090}"
if [[ $start == 1 ]]; then
  url="${GENQ_LM_EVAL_URL:-http://127.0.0.1:$port/v1/completions}"
else
  url="${GENQ_LM_EVAL_URL:-http://127.0.0.1:8080/v1/completions}"
fi
export OPENAI_API_KEY="${GENQ_API_KEY:-${OPENAI_API_KEY:-}}"
# Task data are local files and the tokenizer a local folder: never reach for the Hugging Face hub.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

venv="${GENQ_LM_EVAL_VENV:-$cache/lm-eval-venv}"
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c 'import lm_eval, aiohttp, tenacity, transformers, gguf' 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    'lm-eval[api]>=0.4.9,<0.5' 'transformers>=4.40' 'gguf>=0.10'
fi

# lm-eval counts a log-likelihood request's context tokens itself, so it needs the served model's
# tokenizer: a Hugging Face copy of the one inside the GGUF. Requests still go out as text.
[[ -s "$model_path" || "$model_path" != "$default_model_path" ]] || scripts/fetch-model.sh >&2
tokenizer="$cache/lm-eval-tokenizers/$(basename "$model_path" .gguf)"
if [[ ! -s "$tokenizer/tokenizer.json" || "$model_path" -nt "$tokenizer/tokenizer.json" ]]; then
  "$venv/bin/python" eval/gguf_tokenizer.py "$model_path" "$tokenizer"
fi

wait_http() {
  local what=$1 url=$2 tries=$3
  for _ in $(seq "$tries"); do
    curl -fs -o /dev/null "$url" && return 0
    sleep 1
  done
  echo "$what not ready at $url; logs in $logs" >&2
  tail -n 20 "$logs"/*.log >&2
  exit 1
}

if [[ $start == 1 ]]; then
  scripts/services.sh >&2
  bin="${GENQ_BIN_DIR:-}"
  if [[ -z $bin ]]; then
    bin="$CARGO_TARGET_DIR/release"
    [[ -x "$bin/genq" && -x "$bin/genq-worker" ]] || bin="$CARGO_TARGET_DIR/debug"
  fi
  for b in genq genq-worker; do
    [[ -x "$bin/$b" ]] || { echo "no $bin/$b: build it (cargo build --bins) or set GENQ_BIN_DIR" >&2; exit 1; }
  done
  logs="$(mktemp -d)"
  worker_addr="127.0.0.1:${GENQ_LM_EVAL_WORKER_PORT:-19464}"
  cleanup() {
    kill "${serve_pid:-}" "${worker_pid:-}" 2>/dev/null || true
    wait 2>/dev/null || true
  }
  trap cleanup EXIT
  "$bin/genq-worker" --model-name "$model" --model-path "$model_path" --metrics-addr "$worker_addr" >"$logs/worker.log" 2>&1 &
  worker_pid=$!
  GENQ__GATEWAY__API_KEYS="${GENQ__GATEWAY__API_KEYS:-$OPENAI_API_KEY}" \
    "$bin/genq" serve --listen "127.0.0.1:$port" --model "$model" >"$logs/serve.log" 2>&1 &
  serve_pid=$!
  wait_http worker "http://$worker_addr/readyz" 300
  wait_http gateway "http://127.0.0.1:$port/healthz" 60
  echo "worker and gateway up (logs in $logs)" >&2
fi

"$venv/bin/lm_eval" --model local-completions \
  --model_args "model=$model,base_url=$url,tokenizer_backend=huggingface,tokenizer=$tokenizer,tokenized_requests=False,num_concurrent=${GENQ_LM_EVAL_CONCURRENCY:-8},max_retries=3" \
  --include_path eval/ --tasks "$tasks" ${extra[@]+"${extra[@]}"}
echo "lm-eval: ${SECONDS}s in all" >&2
