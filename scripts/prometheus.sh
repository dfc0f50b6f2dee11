#!/usr/bin/env bash
# Make `prometheus` and `promtool` available for the observability tests, installing Debian's
# `prometheus` package when absent. Only the binaries are needed: the tests start their own
# Prometheus on a loopback port with a temporary config and storage, so the packaged service is
# neither required nor touched. Idempotent.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "cannot install prometheus: no apt-get; install prometheus and promtool with your package manager" >&2
  exit 1
fi
SUDO=""
if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
if [[ -z "${GENQ_APT_UPDATED:-}" ]]; then
  $SUDO apt-get update -qq
  export GENQ_APT_UPDATED=1
fi
# Where the package starts a system service (systemd hosts), it listens on :9090; the tests never
# use it, and pick their own free port.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v prometheus >/dev/null && command -v promtool >/dev/null
echo "installed prometheus $(prometheus --version 2>&1 | head -n1)"
