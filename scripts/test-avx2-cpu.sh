#!/usr/bin/env bash
# Runs the packed-kernel tests on an emulated CPU with AVX2 but no AVX-512 (QEMU's user-mode
# `-cpu max`), so `auto`'s choice there and the AVX2 kernel are tested whatever this machine has.
# Installs qemu-user from the OS packages when it is missing. Expects CARGO_TARGET_DIR as test.sh
# sets it; builds no more than `cargo test --workspace --lib` does (the same features, so nothing again).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v qemu-x86_64 >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null
fi
bin="$(cargo test --workspace --lib --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "genq_worker" and m["profile"]["test"] and m.get("executable"):
        print(m["executable"])')"
[[ -x "$bin" ]] || { echo "the worker's unit-test binary was not found" >&2; exit 1; }
echo "packed kernels on an emulated AVX2 CPU (qemu-x86_64 -cpu max): $bin"
qemu-x86_64 -cpu max "$bin" engine::llama::packed::tests
