#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU and the CUDA build of genq (scripts/cuda-build.sh),
# with no download:
#   1. writes a random-weight Llama of SmolLM2-135M's shape (bf16 safetensors) and a tiny one (f32);
#   2. greedy generation on the tiny model, CPU vs GPU: must be equal in f32 (bf16 is reported);
#   3. `genq bench engine` on the GPU at batch 1/32/128/256 (32-token prompts, 64 new tokens),
#      and on the CPU at batch 1/32/256 (16 new tokens, to keep it short);
#   4. prints one table: decode tokens/s, the memory-bandwidth bound of each batch and the
#      fraction reached, the CPU figure beside it. Everything is also left in $OUT (or a temp dir).
#
#   scripts/gpu-check.sh [BIN_DIR]        # BIN_DIR holds genq-gpu-check (and genq, used when there)
#
# BIN_DIR defaults to $GENQ_BIN_DIR, then .cache/gpu-check/bin (where `scripts/cuda-build.sh
# --stage` copies stripped binaries so they travel with the checkout), then the CUDA target folder.
# The binaries need the CUDA 13 runtime libraries (cudart, cuBLAS, cuRAND, NVRTC) and a driver for
# CUDA >= 13: found in $GENQ_CUDA_LIB, .cache/cuda (scripts/cuda-toolkit.sh), a pip-installed
# nvidia/cu13, or /usr/local/cuda. Settings: GENQ_GPU_DEVICE (cuda:0), GENQ_GPU_BW_GBS (memory
# bandwidth in GB/s; guessed from the GPU's name), GENQ_CHECK_SKIP_CPU=1 (no CPU bench).
# Takes about 3-5 minutes on an H200 host with 16 cores; every stage has a timeout.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
device="${GENQ_GPU_DEVICE:-cuda:0}"
out="${OUT:-$(mktemp -d)}/gpu-check"
mkdir -p "$out"
log() { echo "gpu-check: $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

bin="${1:-${GENQ_BIN_DIR:-}}"
if [[ -z "$bin" ]]; then
  for d in "$root/.cache/gpu-check/bin" "${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/genq/target-cuda/release"; do
    if [[ -x "$d/genq-gpu-check" ]]; then bin="$d"; break; fi
  done
fi
[[ -n "$bin" && -x "$bin/genq-gpu-check" ]] \
  || fail "no CUDA build of genq-gpu-check found (run scripts/cuda-build.sh, or pass BIN_DIR)"

command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: no NVIDIA driver on this machine"
gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"
driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1)"
log "GPU: $gpu_name, driver $driver"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true

# The CUDA runtime libraries the binary links against.
libdirs=("${GENQ_CUDA_LIB:-}" "$root/.cache/cuda/nvidia/cu13/lib" /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64)
while IFS= read -r d; do libdirs+=("$d"); done < <(python3 -c 'import glob, site; [print(p) for s in site.getsitepackages() for p in glob.glob(s + "/nvidia/cu13/lib")]' 2>/dev/null || true)
for d in "${libdirs[@]}"; do
  [[ -n "$d" && -e "$d/libcublas.so.13" ]] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" && break
done
missing="$(ldd "$bin/genq-gpu-check" | grep 'not found' || true)"
[[ -z "$missing" ]] || fail "libraries missing for $bin/genq-gpu-check (set GENQ_CUDA_LIB to a folder with the CUDA 13 libraries):
$missing"

bw="${GENQ_GPU_BW_GBS:-}"
if [[ -z "$bw" ]]; then
  case "$gpu_name" in
    *H200*) bw=4800 ;;
    *H100*PCIe*) bw=2000 ;;
    *H100*|*GH200*) bw=3350 ;;
    *A100*80GB*) bw=2039 ;;
    *A100*) bw=1555 ;;
    *L40S*|*L40*) bw=864 ;;
    *L4*) bw=300 ;;
    *) bw=1000; log "unknown GPU: bandwidth bound computed for $bw GB/s (set GENQ_GPU_BW_GBS)" ;;
  esac
fi

stage() {  # stage NAME SECONDS COMMAND...: run with a timeout, output into $out/NAME.*
  local name="$1" secs="$2"; shift 2
  local start=$SECONDS
  log "$name ..."
  timeout "$secs" "$@" > "$out/$name.jsonl" 2> "$out/$name.log"
  local rc=$?
  log "$name: exit $rc in $((SECONDS - start)) s"
  return $rc
}

status=0
stage write-smollm2 120 "$bin/genq-gpu-check" write-model --shape smollm2 --dtype bf16 --out "$out/smollm2-random" \
  || fail "writing the random SmolLM2-shaped model (see $out/write-smollm2.log)"
stage write-tiny 60 "$bin/genq-gpu-check" write-model --shape tiny --dtype f32 --out "$out/tiny-random" \
  || fail "writing the tiny model"

# Greedy equality: f32 must match exactly; bf16 rounds differently from the CPU's f32, so it is
# reported, not required.
if ! stage greedy-f32 120 "$bin/genq-gpu-check" compare --model "$out/tiny-random" --device "$device" \
  --weights f32 --jobs 16 --new-tokens 32 --require-equal; then
  status=1
  log "greedy CPU vs GPU (f32) differs or failed: $(cat "$out/greedy-f32.jsonl" "$out/greedy-f32.log" | tail -n 5)"
fi
stage greedy-bf16 120 "$bin/genq-gpu-check" compare --model "$out/tiny-random" --device "$device" \
  --weights native --jobs 16 --new-tokens 32 || status=1
# The other architectures (qwen2 biases, qwen3 q/k norms, phi3 fused tensors, gpt2 LayerNorm,
# GELU and learned positions): tiny f32 models, greedy CPU vs GPU must be equal as for llama.
for arch in qwen2 qwen3 phi3 gpt2; do
  if stage "write-$arch" 60 "$bin/genq-gpu-check" write-model --shape tiny --arch "$arch" --dtype f32 \
    --out "$out/tiny-$arch"; then
    stage "greedy-f32-$arch" 120 "$bin/genq-gpu-check" compare --model "$out/tiny-$arch" --device "$device" \
      --weights f32 --jobs 16 --new-tokens 32 --require-equal || status=1
  else
    status=1
  fi
done

# `genq bench engine` when genq is there; else the same benchmark function in genq-gpu-check.
if [[ -x "$bin/genq" ]]; then
  bench=("$bin/genq" bench engine --model-path "$out/smollm2-random" --prompt-tokens 32)
else
  bench=("$bin/genq-gpu-check" bench --model "$out/smollm2-random" --prompt-tokens 32)
fi
stage bench-gpu 300 "${bench[@]}" --device "$device" --batch-sizes 1,32,128,256 --new-tokens 64 || status=1
if [[ "${GENQ_CHECK_SKIP_CPU:-0}" != 1 ]]; then
  stage bench-cpu 300 "${bench[@]}" --device cpu --weights f32 --batch-sizes 1,32,256 --new-tokens 16 || true
fi
gguf="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ -f "$gguf" ]]; then
  # The real GGUF, quantized matmuls on the GPU (only when the model is on this machine).
  stage bench-gpu-gguf 180 "$bin/genq-gpu-check" bench --model "$gguf" --device "$device" \
    --batch-sizes 1,32,256 --prompt-tokens 32 --new-tokens 64 || status=1
fi

echo
echo "## genq GPU check: $gpu_name (driver $driver), device $device, $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "Random-weight SmolLM2-135M-shaped model, bf16 safetensors; 32-token prompts, 64 new tokens (CPU: 16, f32 weights)."
echo
"$bin/genq-gpu-check" table --model "$out/smollm2-random" --gpu "$out/bench-gpu.jsonl" \
  --cpu "$out/bench-cpu.jsonl" --bandwidth-gbs "$bw" --bytes-per-value 2 --gpu-name "$gpu_name" || status=1
if [[ -s "$out/bench-gpu-gguf.jsonl" ]]; then
  echo
  echo "SmolLM2-135M-Instruct Q4_1 GGUF (quantized matmuls on the GPU; the bound assumes 2 bytes a weight, so it is low):"
  echo
  "$bin/genq-gpu-check" table --model "$out/smollm2-random" --gpu "$out/bench-gpu-gguf.jsonl" \
    --bandwidth-gbs "$bw" --bytes-per-value 2 --gpu-name "$gpu_name" || true
fi
echo
echo "Greedy CPU vs GPU, tiny model (16 sequences x 32 tokens):"
cat "$out/greedy-f32.jsonl" "$out/greedy-bf16.jsonl" 2>/dev/null
echo
echo "Files: $out"
exit $status
