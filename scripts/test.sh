#!/usr/bin/env bash
# The whole test suite: starts RabbitMQ and Redis if needed, fetches the default model once,
# builds the binaries, and runs every unit and integration test against the real services.
set -euo pipefail
cd "$(dirname "$0")/.."
# Model tests fail here when the default model is missing (a bare `cargo test` lists them as ignored).
export GENQ_REQUIRE_MODEL=1
# Build outside the checkout by default, so a fresh clone (as CI makes) reuses compiled dependencies.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/genq/target}"
# No incremental state: a fresh clone builds genq's crates once, and incremental state (several
# GB per checkout path) would only fill the disk.
export CARGO_INCREMENTAL=0
scripts/services.sh
scripts/prometheus.sh   # prometheus + promtool binaries for tests/tests/observability.rs
scripts/fetch-model.sh
scripts/fetch-llamacpp-src.sh >/dev/null   # llama.cpp's vocabularies, tokenizer cases and chat templates
scripts/validate-deploy.sh   # compose, k8s + KEDA schemas, hadolint: no Docker engine needed
# All targets in one build: the tests' dev-dependencies change features of shared crates (num,
# idna), so building the binaries alone would compile candle, redis and lapin a second time.
cargo build --workspace --all-targets
cargo test --workspace "$@"
scripts/test-avx2-cpu.sh   # the packed kernels again on an emulated CPU without AVX-512
